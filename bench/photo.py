"""A deterministic 12 MP phone-style JPEG (EXIF-rotated) and painted-blob masks of a chosen coverage.

The photo is demo/chelsea.png upscaled to 4000x3000 with seeded sensor-like noise, so the JPEG carries
real detail (a smooth upscale would decode unrealistically fast). It is stored landscape with EXIF
orientation 6, as phones do, so the upright photo is 3000 wide and 4000 high.
"""

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from bench.common import DEMO_PHOTO, REPO_ROOT

STORED_SIZE = (4000, 3000)
UPRIGHT_SIZE = (3000, 4000)
# EXIF tag 0x0112; 6 = the stored image must be rotated 90° clockwise to be upright.
ORIENTATION_TAG, ROTATE_90_CW = 0x0112, 6
JPEG_QUALITY = 90
PHOTO_PATH = REPO_ROOT / "build" / "bench" / "photo-12mp.jpg"


def photo_bytes(path: Path = PHOTO_PATH) -> bytes:
    """The 12 MP JPEG's bytes, generated on first use and cached at `path`."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_make_photo())
    return path.read_bytes()


def textured_photo(width: int, height: int) -> npt.NDArray[np.uint8]:
    """The demo photo at this size with seeded sensor-like noise (RGB, height x width x 3)."""
    base = Image.open(DEMO_PHOTO).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(12).normal(0.0, 6.0, (height, width, 3))
    return np.clip(np.asarray(base, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def _make_photo() -> bytes:
    pixels = textured_photo(*STORED_SIZE)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = ROTATE_90_CW
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    return buffer.getvalue()


def blob_mask(
    coverage: float, width: int = UPRIGHT_SIZE[0], height: int = UPRIGHT_SIZE[1]
) -> npt.NDArray[np.uint8]:
    """An ellipse covering `coverage` of the frame (255 = repaint), off-centre like a painted object."""
    # Ellipse area = pi * a * b with the frame's aspect: a = rx * width, b = rx * height.
    radius = float(np.sqrt(coverage / np.pi))
    centre_x, centre_y = 0.5 + 0.5 * (0.5 - radius) * 0.4, 0.5 - 0.5 * (0.5 - radius) * 0.3
    ys, xs = np.ogrid[:height, :width]
    inside = ((xs / width - centre_x) / radius) ** 2 + ((ys / height - centre_y) / radius) ** 2 <= 1.0
    return np.where(inside, np.uint8(255), np.uint8(0))
