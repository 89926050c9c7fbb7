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

# Ray enables token authentication for the local instances ray.init() starts (2.59 on) and saves
# the token in ~/.ray/auth_token, but a driver that names an address never turns it on by itself.
JOIN_HINT = ("a cluster that asks for Ray's token (the default for an instance `ray.init()` or "
             "`python -m studio serve` started) needs RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN "
             "or ~/.ray/auth_token (`ray get-auth-token` on the head prints it); --ray auto finds one on this machine")


def join(address: str | None, **init):
    """ray.init at `address` (None: start a local instance); a cluster it cannot join is a StudioError."""
    import ray

    from studio.errors import StudioError

    try:
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, **init)
    except (ConnectionError, RuntimeError) as exc:
        raise StudioError(f"--ray {address}: could not join the Ray cluster ({exc}); {JOIN_HINT}.") from None
