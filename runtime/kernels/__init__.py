"""Triton kernels (one per file, each with its torch twin as the test oracle).

``runtime.backends`` decides where they run: the Triton backend uses them for the operators
they cover and the torch reference (``runtime.reference``) for the rest. Kernels launched on
CPU tensors run in Triton's interpreter (tests only).
"""
