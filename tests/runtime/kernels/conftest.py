"""Kernel tests run in Triton's interpreter on CPU; it must be on before kernels are
decorated, so this is set when the kernel tests are collected, before they import kernels."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
