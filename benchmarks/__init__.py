"""Diffusion Studio's benchmark: `python -m benchmarks.benchmark` (see benchmarks/README.md).

A measuring tool that sits beside the studio and only calls its public surfaces; nothing under
`studio/` imports from here.
"""
