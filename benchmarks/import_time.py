"""Compile time of the torch.export importer: export, translation and the whole compile.

    python -m benchmarks.import_time

Prints, per model, the best of three after a first compile of the same architecture (224 px,
patch 16, stride 4, random weights). Run on a quiet machine.
"""

from __future__ import annotations

import time

import timm
import torchvision

import krypton_ql as kql
from compiler.importer import export, import_model
from compiler.types import Size2

MODELS = {
    "ResNet50 (torchvision)": lambda: torchvision.models.resnet50(),
    "EfficientNet-B0 (torchvision)": lambda: torchvision.models.efficientnet_b0(),
    "ConvNeXt-T (torchvision)": lambda: torchvision.models.convnext_tiny(),
    "EfficientNet-B0 (timm)": lambda: timm.create_model("efficientnet_b0"),
}


def main() -> None:
    shape = (3, 224, 224)
    for name, build in MODELS.items():
        model = build().eval()
        kql.compile(model, shape, patch=16, stride=4)  # warm-up
        exports, imports, compiles = [], [], []
        for _ in range(3):
            start = time.perf_counter()
            exported = export(model, shape)
            exported_at = time.perf_counter()
            import_model(exported, shape, Size2(16, 16), (0.0,) * 3)
            imported_at = time.perf_counter()
            kql.compile(model, shape, patch=16, stride=4)
            compiled_at = time.perf_counter()
            exports.append(exported_at - start)
            imports.append(imported_at - exported_at)
            compiles.append(compiled_at - imported_at)
        print(
            f"{name}: export {min(exports):.2f} s, import {min(imports):.2f} s, "
            f"whole compile {min(compiles):.2f} s"
        )


if __name__ == "__main__":
    main()
