"""Arrays from files: NIfTI volumes (``.nii``, ``.nii.gz``, read with nibabel as MONAI reads
them) and NumPy arrays (``.npy``), as model inputs ``[C, *spatial]``; volume heatmaps written
back as NIfTI on the input's voxel grid, with its affine.

A NIfTI file of three axes ``[X, Y, Z]`` is one channel ``[1, X, Y, Z]``; of four, ``[X, Y, Z,
C]`` becomes ``[C, X, Y, Z]`` — the axes in the file's order, as MONAI's
``LoadImage(ensure_channel_first=True)`` returns them (no reorientation). A ``.npy`` array is
already the model's input, channels first: ``[C, L]``, ``[C, H, W]`` or ``[C, D, H, W]``.
Neither goes through a model's photo transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from compiler.errors import InvalidInputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".npy")


def is_volume(path: Path) -> bool:
    """Whether ``path`` names a NIfTI or ``.npy`` file (by its suffix)."""
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def stem(path: Path) -> str:
    """The file's name without its suffix (``ct.nii.gz`` → ``ct``).

    >>> stem(Path("scans/ct.nii.gz")), stem(Path("ecg.npy")), stem(Path("photo.png"))
    ('ct', 'ecg', 'photo')
    """
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def volume_files(folder: Path) -> list[Path]:
    """The folder's NIfTI and ``.npy`` files (regular files only), sorted."""
    return sorted(p for p in folder.iterdir() if is_volume(p) and p.is_file())


@dataclass(frozen=True)
class VolumeFile:
    """A NIfTI or ``.npy`` file, read when called as a float32 ``[C, *spatial]`` tensor."""

    path: Path

    def __call__(self) -> Tensor:
        return read(self.path)

    @property
    def affine(self) -> np.ndarray:
        """The voxel-to-world matrix of a NIfTI file (4×4); the identity for ``.npy``."""
        if not self.path.name.lower().endswith(NIFTI_SUFFIXES):
            return np.eye(4)
        return np.asarray(_nifti(self.path).affine, dtype=np.float64)


def read(path: Path) -> Tensor:
    """A NIfTI or ``.npy`` file as a float32 model input ``[C, *spatial]`` (module doc)."""
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        data = np.asarray(_nifti(path).dataobj)
        if data.ndim == 3:
            data = data[None]
        elif data.ndim == 4:
            data = np.moveaxis(data, -1, 0)
        else:
            raise InvalidInputError(
                f"{path}: a NIfTI volume has 3 axes [X, Y, Z] (or 4, [X, Y, Z, channels]), "
                f"this one has {data.ndim}"
            )
    else:
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"{path} is not a NumPy .npy array: {error}") from None
        if not 2 <= data.ndim <= 4:
            raise InvalidInputError(
                f"{path}: an array is one input, channels first ([C, L], [C, H, W] or [C, D, H, "
                f"W]), got shape {list(data.shape)}"
            )
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InvalidInputError(f"{path}: expected real numbers, got {data.dtype}")
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def read_labels(path: str | Path) -> np.ndarray:
    """A label image as integers, laid out as ``read`` lays out an input's spatial axes: a
    NIfTI volume ``[X, Y, Z]``, an ``.npy`` array as stored, or a picture file (a PNG of
    labels, one channel). Whole-valued floats (NIfTI label maps often store them) become
    integers; other values are refused."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        data = np.asarray(_nifti(path).dataobj)
    elif path.name.lower().endswith(".npy"):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"{path} is not a NumPy .npy array: {error}") from None
    else:
        try:
            with Image.open(path) as picture:
                data = np.asarray(picture)
        except (OSError, UnidentifiedImageError) as error:
            raise InvalidInputError(f"cannot read the label image {path}: {error}") from None
        if data.ndim == 3:
            raise InvalidInputError(
                f"{path}: a label image has one channel, this one {data.shape[2]}"
            )
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise InvalidInputError(f"{path}: labels are whole numbers, got fractions")
        data = data.astype(np.int64)
    return data


def _nifti(path: Path):  # nibabel's image (untyped)
    import nibabel

    try:
        return nibabel.load(str(path))
    except Exception as error:  # nibabel raises several kinds for a bad file
        raise InvalidInputError(f"{path} is not a readable NIfTI file: {error}") from None


def on_input_grid(
    heatmap: Tensor, shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]
) -> np.ndarray:
    """A heatmap ``[*grid]`` on the input's voxels ``shape``: each voxel takes the value of the
    window whose centre is nearest along every axis (windows at ``i·stride``, centre
    ``i·stride + (patch − 1)/2``).

    >>> on_input_grid(torch.tensor([1.0, 2.0]), (6,), (2,), (4,)).tolist()
    [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    """
    index = []
    for size, cells, p, s in zip(shape, heatmap.shape, patch, stride):
        nearest = np.rint((np.arange(size) - (p - 1) / 2) / s)
        index.append(np.clip(nearest, 0, cells - 1).astype(np.int64))
    values = heatmap.detach().float().cpu().numpy()
    return values[np.ix_(*index)]


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    """``volume`` ``[X, Y, Z]`` as a float32 NIfTI file with ``affine``."""
    import nibabel

    image = nibabel.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    nibabel.save(image, str(path))
    return path
