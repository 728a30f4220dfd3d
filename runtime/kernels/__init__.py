"""Triton kernels (one per file, each with its torch twin as the test oracle, and a ``launch``
adapter from an IR node and its inputs to the kernel's arguments).

``runtime.backends`` decides where they run: the Triton backend's table holds them for the
operators they cover, and the torch reference (``runtime.reference``) runs the rest. Kernels
launched on CPU tensors run in Triton's interpreter (tests only).
"""
