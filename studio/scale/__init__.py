"""Generation on Ray Serve replicas behind one studio (`python app.py --ray [ADDRESS] --replicas N`).

The front end (the Gradio UI, its sessions, history and viewer) stays one sticky process; the
generation backend is N stateless Ray Serve replicas of the pipeline manager. `backend.RayManager`
is the front end's manager: generation goes to the replicas through a streaming DeploymentHandle
(each step's previews come back as they are made), a cancel reaches the replica through a named
actor it watches, and a model switch is loaded in the front end first (a failed one keeps the
model everywhere) and then applied to every replica by `reconfigure`. `deployment` holds the
replica and the cancel board. Ray is imported only here, and only with --ray.
"""
APP = "diffusion-studio"          # the Serve application's name
NAMESPACE = "diffusion-studio"    # Ray namespace of the cancel board
BOARD = "diffusion-studio-cancels"
