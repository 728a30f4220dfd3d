"""Photos from files and uploads: decoded as RGB ``uint8 [H, W, 3]`` within a pixel limit, and
the image files of a folder. Every front end reads photos through here (the query language's
image sets, dataset jobs, ``kql serve``'s uploads), so each gets the same checks and messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.errors import InvalidInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def image_files(folder: Path) -> list[Path]:
    """The folder's image files, sorted; entries with an image suffix that are not regular
    files (a directory, a FIFO, a broken or looping link) are skipped with one warning."""
    named = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    files = [p for p in named if p.is_file()]
    if len(files) < len(named):
        skipped = [p.name for p in named if p not in files]
        listed = ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")
        log.warning(
            "skipped %d entries of %s that are not regular files: %s", len(skipped), folder, listed
        )
    return files


# Photos larger than this are refused (a decompression bomb, or a mistake): PIL's own limit,
# about 89 million pixels. ``kql --max-pixels N`` (or setting this) raises it.
MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class PhotoFile:
    """An image file, decoded (RGB, ``uint8 [H, W, 3]``) when called; files above
    ``MAX_PIXELS`` are refused from their header, before decoding."""

    path: Path

    def __call__(self) -> np.ndarray:
        return decode(self.path, str(self.path))


def decode(source: Path | bytes, label: str) -> np.ndarray:
    """An image file or its encoded bytes as RGB ``uint8 [H, W, 3]``; more than ``MAX_PIXELS``
    is refused from the header, before decoding, and what is not an image says so."""
    import io

    from PIL import Image, UnidentifiedImageError

    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # checked here instead
    try:
        with Image.open(stream) as image:  # reads the header only
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InvalidInputError(
                    f"{label} has {width}×{height} = {width * height:,} pixels, above "
                    f"the limit of {MAX_PIXELS:,} (kql --max-pixels N raises it)"
                )
            return np.array(image.convert("RGB"))  # a writable copy
    except UnidentifiedImageError as error:
        raise InvalidInputError(f"cannot decode {label}: not an image file PIL can read") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # truncated, corrupt, missing
        raise InvalidInputError(f"cannot decode {label}: {error}") from error
    finally:
        Image.MAX_IMAGE_PIXELS = previous
