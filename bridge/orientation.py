"""EXIF orientation: the stored pixel grid of a photo versus the upright photo the app showed.

The model sees (and the mask is painted on) the upright photo; a JPEG result is spliced into the stored grid
and keeps the original's EXIF, orientation tag included, so viewers turn it upright exactly as before.
"""

import struct
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from PIL import Image

# Pixels or a per-pixel map: any array whose first two axes are rows and columns.
Grid = TypeVar("Grid", bound=np.ndarray[Any, Any])

ORIENTATION_TAG = 0x0112
# What turns the stored grid upright, per orientation (as PIL.ImageOps.exif_transpose does).
_TO_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Every one of them undoes itself, but the quarter turns, which undo each other.
_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}


# What Pillow raises on EXIF it cannot parse (cut short, a broken directory, not TIFF at all); UserWarning
# too, which it issues as it skips a tag at fault and reads on, raised only in a process under `-W error`
# (the bridge's warnings are logged; the test suite leaves Pillow's EXIF warnings unraised: pyproject.toml).
EXIF_ERRORS = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, UserWarning)


def orientation_of(image: Image.Image) -> int:
    """The image's EXIF orientation, 1 (as stored) when absent, unreadable or not one of the eight: broken
    metadata is no reason to refuse pixels that decode.

    Only EXIF's, as viewers turn a photo (the app shows it as they do, and the mask is painted on that):
    Pillow's `getexif` also takes one from XMP (`tiff:Orientation`) when EXIF has none, which no viewer
    applies. A PNG's EXIF may be in its eXIf chunk or in ImageMagick's "Raw profile type exif" text chunk:
    Safari and iOS read both (Chrome and Android show a PNG as stored). A HEIC's and an AVIF's own
    transformations (irot, imir) come as EXIF: libheif applies them and says 1, Pillow's AVIF reader writes
    them there in place of what the file's EXIF said."""
    exif = image.info.get("exif")
    raw = image.info.get("Raw profile type exif")
    try:
        if not exif and isinstance(raw, str):
            exif = bytes.fromhex("".join(raw.split("\n")[3:]))  # as Pillow reads it
        if not exif:
            return 1
        parsed = Image.Exif()
        parsed.load(exif)
        value = parsed.get(ORIENTATION_TAG, 1)
    except EXIF_ERRORS:
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """The stored image turned upright (the image itself for orientation 1)."""
    method = _TO_UPRIGHT.get(orientation)
    return image if method is None else image.transpose(method)


def upright_view(pixels: Grid, orientation: int) -> Grid:
    """Stored pixels (height x width [x channels]) as the upright photo: a view, no copy.

    The turn is left to whoever needs it turned: the model's context is a crop of it (made contiguous when
    sent), a spliced JPEG result is written in the stored grid again, and the preview is reduced in the stored
    grid and turned small (`stored_layout`). Turning a 12 MP RGB photo into a new array took 34 ms."""
    method = _TO_UPRIGHT.get(orientation)
    return pixels if method is None else _transposed(pixels, method)


def stored_layout(pixels: Grid, orientation: int) -> Grid | None:
    """The contiguous stored grid that upright `pixels` is a view of (`upright_view`), or None when `pixels`
    is laid out otherwise (contiguous upright, as Pillow turns a photo)."""
    if pixels.flags.c_contiguous:
        return None
    stored = to_stored(pixels, orientation)
    return stored if stored.flags.c_contiguous else None


def contiguous(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """`pixels` (height x width x channels) as a C-contiguous array: a turned view is copied a whole pixel
    at a time (numpy copies a turned uint8 array a byte at a time: a 12 MP RGB photo took 79 ms, against 34
    as whole pixels and 45 for Pillow's transpose of its own image)."""
    if pixels.flags.c_contiguous:
        return pixels
    height, width, channels = pixels.shape
    if pixels.strides[2] != pixels.itemsize:
        return np.ascontiguousarray(pixels)
    whole = np.ascontiguousarray(pixels.view(np.dtype((np.void, channels)))[..., 0])
    return whole.view(np.uint8).reshape(height, width, channels)


def contiguous_copy(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A C-contiguous copy of `pixels` (height x width [x channels]) that shares no memory with it, a turned
    view of pixels copied a whole pixel at a time (`contiguous`)."""
    if pixels.ndim != 3:
        return np.array(pixels)
    copied = contiguous(pixels)
    return copied.copy() if copied is pixels else copied


def copy_upright(pixels: Grid, orientation: int) -> Grid:
    """A copy of upright pixels laid out as they are: a view of a stored grid is copied as that grid, then
    viewed upright again (numpy copies a turned view element by element: 76-150 ms at 12 MP, against 5-15)."""
    stored = stored_layout(pixels, orientation)
    return pixels.copy() if stored is None else upright_view(stored.copy(), orientation)


def to_stored(pixels: Grid, orientation: int) -> Grid:
    """Upright pixels (height x width [x channels]) back in the stored grid: a view, no copy."""
    method = _TO_UPRIGHT.get(orientation)
    if method is None:
        return pixels
    return _transposed(pixels, _INVERSE.get(method, method))


def stored_origin_at_end(orientation: int) -> tuple[bool, bool]:
    """Whether the stored grid's top-left pixel is in the upright photo's last row, and in its last column."""
    corners = to_stored(np.arange(4).reshape(2, 2), orientation)
    # The upright corner it comes from: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
    origin = int(corners[0, 0])
    return origin >= 2, origin % 2 == 1


def _transposed(pixels: Grid, method: Image.Transpose) -> Grid:
    # Pillow's transposes on arrays: ROTATE_90 is a quarter turn counter-clockwise.
    views: dict[Image.Transpose, Callable[[Any], Any]] = {
        Image.Transpose.FLIP_LEFT_RIGHT: lambda a: a[:, ::-1],
        Image.Transpose.FLIP_TOP_BOTTOM: lambda a: a[::-1],
        Image.Transpose.ROTATE_180: lambda a: a[::-1, ::-1],
        Image.Transpose.ROTATE_90: lambda a: np.rot90(a, 1),
        Image.Transpose.ROTATE_270: lambda a: np.rot90(a, -1),
        Image.Transpose.TRANSPOSE: lambda a: a.swapaxes(0, 1),
        Image.Transpose.TRANSVERSE: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    }
    return cast(Grid, views[method](pixels))
