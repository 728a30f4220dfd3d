"""Triton kernels (one per file, each with its torch twin as the test oracle).

Not yet wired into the executor: the torch reference backend (``runtime.reference``) runs every
plan today. Kernels launched on CPU tensors run in Triton's interpreter (tests only).
"""
