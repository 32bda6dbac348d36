"""The edited image in the original's format: what a phone app shows and stores without surprises.

- JPEG: the edited MCUs spliced into the original's coefficients (fluxfill.bridge.jpeg_splice), in the stored
  orientation with the original's markers; where that cannot be done, a whole re-encode at quality 95 with the
  original's EXIF, in the stored orientation too, and the reason recorded.
- PNG: PNG, keeping transparency (the original's alpha, with the colours behind it:
  fluxfill.bridge.model_rgb) and greyscale.
- WebP: WebP, lossless when the original was, else quality 90; transparency kept.
- PNG and WebP keep the original's colour profile and EXIF (orientation cleared: the pixels are upright).
- HEIC/HEIF and AVIF: a quality-95 JPEG of the upright photo (what every phone and browser shows; greyscale
  stays greyscale), with the original's EXIF (orientation cleared: the pixels are upright) and colour profile;
  one with transparency (an iOS sticker, a cut-out) a PNG that keeps it, as a JPEG cannot.
"""

import io
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from PIL import Image, PngImagePlugin

from fluxfill.bridge import jpeg_markers, jpeg_splice, model_rgb, orientation, stale_metadata
from fluxfill.bridge.contract import RESULT_EXTENSIONS
from fluxfill.bridge.intake import Photo, sniff_format
from fluxfill.bridge.photo_colours import save_options
from fluxfill.inpaint.geometry import Box

REENCODE_QUALITY = 95
LOSSY_WEBP_QUALITY = 90


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
    before: npt.NDArray[np.uint8] | None = None,
) -> EncodedResult:
    """The upright edited pixels (height x width x 3) as the result file for this original (or as a PNG);
    `ahead`: read_ahead(photo), when it was started; `within`: the only upright pixels the edit may have
    changed (the model's context), when known; `before`: the photo's pixels as they were within `within`,
    when `photo.pixels` is `edited` itself, edited in place (else `photo.pixels` are the photo before)."""
    if always_png:
        return _png_or_webp(photo, edited, "PNG")
    if photo.format == "JPEG":
        return _jpeg(photo, edited, ahead, within, photo.pixels if before is None else before)
    if photo.format in ("PNG", "WEBP"):
        return _png_or_webp(photo, edited, photo.format)
    if photo.alpha is not None:
        png_result = _png_or_webp(photo, edited, "PNG")
        why_png = f"the original is {photo.format} with transparency, which a JPEG cannot hold"
        return replace(png_result, note=_joined(why_png, png_result.note or ""))
    exif, why = stale_metadata.carried_exif(
        photo.exif, upright=True, max_bytes=stale_metadata.JPEG_MAX_EXIF_BYTES
    )
    image = model_rgb.picture(edited, None, photo.greyscale)
    data = _save(image, "JPEG", quality=REENCODE_QUALITY, **save_options(exif, photo.icc_profile, image.mode))
    note = _joined(f"the original is {photo.format}{_exif_note(why)}", _frames_note(photo), photo.colour_note)
    return EncodedResult(data, "jpeg", "reencoded", note)


def _png_or_webp(photo: Photo, edited: npt.NDArray[np.uint8], kind: str) -> EncodedResult:
    """A PNG or WebP (`kind`) with the original's colour profile (an iPhone screenshot is a Display P3 PNG:
    without it the result's colours would shift) and its EXIF, upright like the pixels."""
    image = model_rgb.picture(edited, photo.alpha, photo.greyscale)
    exif, why = stale_metadata.carried_exif(photo.exif, upright=True)
    metadata = save_options(exif, photo.icc_profile, image.mode)
    note = _joined(
        f"the original's EXIF was left out: {why}" if why else "", _frames_note(photo), photo.colour_note
    )
    if kind == "PNG":
        colour = PngImagePlugin.PngInfo()
        for chunk, value in photo.png_colour:
            colour.add(chunk, value)  # Pillow writes these before the pixel data, where they belong
        return EncodedResult(_save(image, "PNG", pnginfo=colour, **metadata), "png", "lossless", note)
    if photo.lossless:
        return EncodedResult(_save(image, "WEBP", lossless=True, **metadata), "webp", "lossless", note)
    data = _save(image, "WEBP", quality=LOSSY_WEBP_QUALITY, **metadata)
    return EncodedResult(data, "webp", "lossy", note)


def _jpeg(
    photo: Photo,
    edited: npt.NDArray[np.uint8],
    ahead: jpeg_splice.CoefficientsAhead | None,
    within: Box | None,
    before: npt.NDArray[np.uint8],
) -> EncodedResult:
    stored = orientation.to_stored(edited, photo.orientation)
    # Compared upright (only over the model's context when known), in blocks aligned to the stored grid's
    # origin; the small grid is turned.
    from_end = orientation.stored_origin_at_end(photo.orientation)
    changed = orientation.to_stored(
        jpeg_splice.changed_blocks(before, edited, from_end, within), photo.orientation
    )
    try:
        coefficients = ahead.result() if ahead is not None else None
        spliced = jpeg_splice.splice(photo.original, stored, changed, coefficients)
        # An edit that changed nothing returns the original itself, with everything it carries.
        left_out = jpeg_markers.left_out_of(photo.original) if spliced is not photo.original else []
        said = "; ".join(left_out)
        note = f"left out of the original's metadata, as it shows the photo before the edit: {said}"
        return EncodedResult(spliced, "jpeg", "dct_splice", note if left_out else None)
    except jpeg_splice.SpliceRefusedError as refused:
        image = model_rgb.picture(np.ascontiguousarray(stored), None, photo.greyscale)
        exif, why = stale_metadata.carried_exif(
            photo.exif, upright=False, max_bytes=stale_metadata.JPEG_MAX_EXIF_BYTES
        )
        data = _save(
            image, "JPEG", quality=REENCODE_QUALITY, **save_options(exif, photo.icc_profile, image.mode)
        )
        return EncodedResult(
            data, "jpeg", "reencoded", f"the original could not be spliced: {refused}{_exif_note(why)}"
        )


def _frames_note(photo: Photo) -> str:
    if photo.frames <= 1:
        return ""
    if photo.format == "HEIF":  # a burst, a stereo pair or a collection: libheif opens the primary image
        return (
            f"the original holds {photo.frames} images (a burst, a pair or a collection): "
            "its primary image was edited"
        )
    return f"the original holds {photo.frames} images (an animation or a sequence): the first was edited"


def _joined(*notes: str) -> str | None:
    """A result's note from its parts; None when every part is empty."""
    return "; ".join(note for note in notes if note) or None


def _exif_note(why: str | None) -> str:
    return f"; its EXIF was left out: {why}" if why else ""


def _save(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()
