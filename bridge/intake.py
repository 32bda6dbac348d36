"""Turn untrusted uploaded bytes into the model's RGB photo and one-channel mask, or a specific refusal.

Rules (documented in docs/bridge.md, "Untrusted images"):
- Only JPEG, PNG and WebP, recognised by their magic bytes, not by name or content type.
- The pixel count is checked from the header before decoding (decompression bombs).
- EXIF orientation is applied, so the photo is upright as the app showed it when the mask was painted.
- Photo modes are normalised to 8-bit RGB: transparency is composited over white, 16-bit is scaled down.
- The mask becomes one 8-bit channel: its alpha when it has real transparency, else its luminance.
- A mask of another size than the photo is scaled to it (nearest neighbour) when the aspect ratios agree
  within 1 %; otherwise the job fails with `mask_size_mismatch`.
"""

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.bridge.ports import ObjectStore
from fluxfill.inpaint import geometry

_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# Peak memory of decoding a photo, per pixel, beyond what the bridge held before: Pillow's decoded image
# (4 bytes a pixel, RGB included), the RGB array (3) and the decoder's buffers. Measured 8.9 (RGBA PNG) and
# 10.1 (RGB JPEG) on a 12 MP photo; tests/unit/bridge/test_memory.py keeps it within this bound.
INTAKE_BYTES_PER_PIXEL = 11


def fetch(objects: ObjectStore, pattern: str, what: str, max_bytes: int) -> bytes:
    """The original's or mask's bytes; refused from its metadata, unread, when missing or over `max_bytes`."""
    info = objects.find(pattern)
    if info is None:
        missing = ErrorCode.ORIGINAL_MISSING if what == "original" else ErrorCode.MASK_MISSING
        raise PermanentJobError(missing, f"the {what} {pattern} does not exist in the bucket")
    if info.size > max_bytes:
        raise PermanentJobError(
            ErrorCode.OBJECT_TOO_LARGE,
            f"the {what} {info.path} is {info.size} bytes, more than the limit of {max_bytes}; "
            "it was not downloaded",
        )
    return objects.read(info)


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP from the leading bytes; None for anything else."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(data: bytes, what: str, max_pixels: int) -> Image.Image:
    kind = sniff_format(data)
    if kind is None:
        raise PermanentJobError(
            ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
            f"the {what} is not a JPEG, PNG or WebP image (by its first bytes)",
        )
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])
        width, height = image.size
        if width * height > max_pixels:
            raise PermanentJobError(
                ErrorCode.IMAGE_TOO_MANY_PIXELS,
                f"the {what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            )
        image.load()
        return ImageOps.exif_transpose(image)
    # Pillow warns, then refuses, beyond its own bomb limit; under `-W error` the warning is raised too.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PermanentJobError(
            ErrorCode.IMAGE_TOO_MANY_PIXELS, f"the {what} is too large: {error}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PermanentJobError(
            ErrorCode.CORRUPT_IMAGE, f"the {what} ({kind}) cannot be decoded: {error or type(error).__name__}"
        ) from None


def _eight_bit(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.uint32)
        return Image.fromarray((values >> 8).clip(0, 255).astype(np.uint8), mode="L")
    return image


# Rows composited at a time: the temporaries stay a few MB whatever the photo's size.
_STRIP_ROWS = 256


def decode_photo(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """The upright photo as height x width x 3 uint8.

    Memory: the decoded image and the returned array, and nothing else of full size (a 50 MP RGBA photo took
    1.15 GB when transparency was composited on whole-image copies): see `INTAKE_BYTES_PER_PIXEL`.
    """
    image = _eight_bit(_open(data, "original photo", max_pixels))
    if image.mode == "P" or "A" in image.mode or "transparency" in image.info:
        if image.mode != "RGBA":
            image = image.convert("RGBA")
        return _over_white(image)
    # convert() copies even an RGB image: a 12 MP photo is 36 MB, so skip it when the mode is right.
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def _over_white(rgba: Image.Image) -> npt.NDArray[np.uint8]:
    """Composite over white strip by strip, into the one full-size output array."""
    width, height = rgba.size
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, _STRIP_ROWS):
        bottom = min(height, top + _STRIP_ROWS)
        strip = np.asarray(rgba.crop((0, top, width, bottom)), dtype=np.uint16)
        alpha = strip[..., 3:]
        out[top:bottom] = (strip[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return out


def decode_mask(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """The upright mask as height x width uint8 (>= 128 means repaint)."""
    image = _eight_bit(_open(data, "mask", max_pixels))
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if "A" in image.mode:
        alpha = np.asarray(image.getchannel("A"), dtype=np.uint8)
        if alpha.min() < 255:
            return alpha
    return np.asarray(image.convert("L"), dtype=np.uint8)


def fit_mask(mask: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """The mask at the photo's size (geometry.fit_mask: the client's rule too), else refused."""
    try:
        return geometry.fit_mask(mask, height, width)
    except geometry.MaskSizeError as error:
        raise PermanentJobError(ErrorCode.MASK_SIZE_MISMATCH, str(error)) from None


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    """The result as PNG (lossless, so untouched pixels stay exactly the original's)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_preview(image: npt.NDArray[np.uint8], max_side: int) -> bytes:
    """A JPEG preview whose longer side is at most `max_side` pixels."""
    preview = Image.fromarray(image, mode="RGB")
    preview.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
