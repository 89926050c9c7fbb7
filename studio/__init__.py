"""Diffusion Studio: a studio for seeing and using diffusion models, on Hugging Face diffusers.

The core (everything here but studio.ui) knows nothing of Gradio: the PipelineManager in
studio.manager is usable from the CLI, tests and notebooks.
"""
__version__ = "0.1.0"
