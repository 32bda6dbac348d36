"""The edited image in the original's format: what a phone app shows and stores without surprises.

- JPEG: the edited MCUs spliced into the original's coefficients (fluxfill.bridge.jpeg_splice), in the stored
  orientation with the original's markers; where that cannot be done, a whole re-encode at quality 95 with the
  original's EXIF, in the stored orientation too, and the reason recorded.
- PNG: PNG, keeping transparency (the original's alpha) and greyscale.
- WebP: WebP, lossless when the original was, else quality 90; transparency kept.
- HEIC/HEIF and AVIF: a quality-95 JPEG of the upright photo (what every phone and browser shows), with the
  original's EXIF (orientation cleared: the pixels are upright) and colour profile.
"""

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from fluxfill.bridge import jpeg_splice, orientation
from fluxfill.bridge.contract import RESULT_EXTENSIONS
from fluxfill.bridge.intake import Photo, sniff_format
from fluxfill.inpaint.geometry import Box

REENCODE_QUALITY = 95
LOSSY_WEBP_QUALITY = 90
# EXIF travels in one APP1 segment of a JPEG (Pillow refuses more); a HEIC's may be larger.
JPEG_MAX_EXIF_BYTES = 65_533


@dataclass(frozen=True)
class EncodedResult:
    data: bytes
    format: str  # jpeg, png or webp
    encoding: str  # dct_splice, reencoded, lossless or lossy
    note: str | None = None  # why a JPEG original was re-encoded whole

    @property
    def extension(self) -> str:
        return RESULT_EXTENSIONS[self.format]

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"


def read_ahead(original: bytes, *, always_png: bool = False) -> jpeg_splice.CoefficientsAhead | None:
    """For a JPEG original whose result will be spliced: its coefficients, read from now on, on a worker
    thread. Only for an original whose header passed intake.check_header (the pixel cap before decoding)."""
    if always_png or sniff_format(original) != "JPEG":
        return None
    return jpeg_splice.CoefficientsAhead(original)


def encode_result(
    photo: Photo,
    edited: npt.NDArray[np.uint8],
    *,
    always_png: bool = False,
    ahead: jpeg_splice.CoefficientsAhead | None = None,
    within: Box | None = None,
) -> EncodedResult:
    """The upright edited pixels (height x width x 3) as the result file for this original (or as a PNG);
    `ahead`: read_ahead(photo), when it was started; `within`: the only upright pixels the edit may have
    changed (the model's context), when known."""
    if always_png:
        return EncodedResult(_save(_with_alpha(photo, edited), "PNG"), "png", "lossless")
    if photo.format == "JPEG":
        return _jpeg(photo, edited, ahead, within)
    if photo.format == "PNG":
        return encode_result(photo, edited, always_png=True)
    if photo.format == "WEBP":
        image = _with_alpha(photo, edited)
        if photo.lossless:
            return EncodedResult(_save(image, "WEBP", lossless=True), "webp", "lossless")
        return EncodedResult(_save(image, "WEBP", quality=LOSSY_WEBP_QUALITY), "webp", "lossy")
    exif, left_out = _jpeg_exif(photo.exif, upright=True)
    data = _save(
        Image.fromarray(edited), "JPEG", quality=REENCODE_QUALITY, **_metadata(exif, photo.icc_profile)
    )
    return EncodedResult(data, "jpeg", "reencoded", f"the original is {photo.format}{left_out}")


def _jpeg(
    photo: Photo,
    edited: npt.NDArray[np.uint8],
    ahead: jpeg_splice.CoefficientsAhead | None,
    within: Box | None,
) -> EncodedResult:
    stored = orientation.to_stored(edited, photo.orientation)
    # Compared upright (only over the model's context when known), in blocks aligned to the stored grid's
    # origin; the small grid is turned.
    from_end = orientation.stored_origin_at_end(photo.orientation)
    changed = orientation.to_stored(
        jpeg_splice.changed_blocks(photo.pixels, edited, from_end, within), photo.orientation
    )
    try:
        coefficients = ahead.result() if ahead is not None else None
        spliced = jpeg_splice.splice(photo.original, stored, changed, coefficients)
        return EncodedResult(spliced, "jpeg", "dct_splice")
    except jpeg_splice.SpliceRefusedError as refused:
        image = Image.fromarray(np.ascontiguousarray(stored))
        if photo.greyscale:
            image = image.convert("L")
        exif, left_out = _jpeg_exif(photo.exif, upright=False)
        data = _save(image, "JPEG", quality=REENCODE_QUALITY, **_metadata(exif, photo.icc_profile))
        return EncodedResult(
            data, "jpeg", "reencoded", f"the original could not be spliced: {refused}{left_out}"
        )


def _with_alpha(photo: Photo, edited: npt.NDArray[np.uint8]) -> Image.Image:
    image = Image.fromarray(edited)
    if photo.alpha is not None:
        image.putalpha(Image.fromarray(photo.alpha))
    elif photo.greyscale:
        image = image.convert("L")
    return image


def _jpeg_exif(exif: bytes | None, *, upright: bool) -> tuple[bytes | None, str]:
    """The EXIF a JPEG result carries (without its orientation when the pixels are upright), and what to add
    to the result's note when the original's is left out: metadata is kept where it can be, and its faults
    never fail a job whose pixels are good."""
    if not exif:
        return exif, ""
    if upright:
        try:
            tags = Image.Exif()
            tags.load(exif)
            tags.pop(orientation.ORIENTATION_TAG, None)
            exif = tags.tobytes()
        except orientation.EXIF_ERRORS as error:
            return None, f"; its EXIF was left out: it cannot be read ({error or type(error).__name__})"
    if len(exif) > JPEG_MAX_EXIF_BYTES:
        return None, f"; its EXIF was left out: {len(exif)} bytes, more than a JPEG segment holds"
    return exif, ""


def _metadata(exif: bytes | None, icc_profile: bytes | None) -> dict[str, bytes]:
    return {
        name: value for name, value in (("exif", exif), ("icc_profile", icc_profile)) if value is not None
    }


def _save(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()
