"""Read photos and masks from files into the arrays the model takes, and write results."""

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from fluxfill.client.errors import InvalidInputError


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(f"{path}: not a readable image ({error})") from None
    # Phones store rotation in EXIF: apply it so mask and photo line up as the user saw them.
    return ImageOps.exif_transpose(image)


def load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """A photo as height x width x 3 uint8 RGB."""
    return np.asarray(_open(path).convert("RGB"), dtype=np.uint8)


def load_mask(path: Path) -> npt.NDArray[np.uint8]:
    """A mask as height x width uint8 (>= 128 repaints); an RGBA image's alpha channel is used if present."""
    image = _open(path)
    if image.mode in {"RGBA", "LA"}:
        image = image.getchannel("A")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def save_rgb(image: npt.NDArray[np.uint8], path: Path) -> None:
    """Write an RGB array; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
