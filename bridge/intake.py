"""Turn untrusted uploaded bytes into the model's RGB photo and one-channel mask, or a specific refusal.

Rules (documented in docs/bridge.md, "Untrusted images"):
- Only JPEG, PNG, WebP, HEIC/HEIF and AVIF, recognised by their leading bytes, not by name or content type.
- The pixel count is checked from the header before decoding (decompression bombs).
- Metadata that breaks Pillow's reader where viewers read past it does not refuse the photo: EXIF Pillow
  cannot handle (fluxfill.bridge.exif_fallback), a PNG's ancillary chunks libpng skips
  (fluxfill.bridge.png_repair).
- EXIF orientation (EXIF's alone, as viewers: not XMP's; see orientation.orientation_of) is applied, so the
  photo is upright as the app showed it when the mask was painted; EXIF that does not parse leaves the photo
  as stored (broken metadata is no reason to refuse good pixels).
- Photo modes are normalised to 8-bit RGB: transparency is composited over white, 16-bit is scaled down.
- The mask becomes one 8-bit channel: its alpha when it has real transparency, else its luminance.
- A mask of another size than the photo is scaled to it (nearest neighbour) when the aspect ratios agree
  within 1 %; otherwise the job fails with `mask_size_mismatch`. One that selects no pixel fails with
  `mask_empty`.
"""

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pillow_heif
from PIL import Image, UnidentifiedImageError

from fluxfill.bridge import (
    exif_fallback,
    jpeg_decode,
    jpeg_markers,
    model_rgb,
    orientation,
    photo_colours,
    png_colour,
    png_repair,
)
from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.inpaint import geometry
from fluxfill.inpaint.contract import MASK_THRESHOLD, ZERO_ONE_MASK_HINT

# HEIC and HEIF by libheif (pillow-heif), AVIF by Pillow itself; opening reads the header, load() decodes.
pillow_heif.register_heif_opener()
# The bridge's own limit (`max_image_pixels`, checked from the header in `_header`) is the only one: Pillow's
# (178,956,970 pixels, checked as it opens) refused a Samsung's 200 MP photo in its own words and with its own
# limit, and would refuse it to a bridge configured to take it.
Image.MAX_IMAGE_PIXELS = None

_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
# ISO BMFF brands (the `ftyp` box): AVIF's, then HEIF's (mif1/msf1 alone mean HEIF's structure).
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
ACCEPTED = "a JPEG, PNG, WebP, HEIC or AVIF image"
T = TypeVar("T")
# A progressive JPEG is decoded a scan at a time, each scan a pass over the whole image's coefficients, so its
# decoding time grows with scans x pixels, not with the file's size: a 119 KB file of a 12 MP frame and
# 1,000 repeats of a 48-byte scan took 8 s in libjpeg-turbo and 7 s more in Pillow here (a 40 MB one, hours).
# Phones write one scan, progressive encoders about ten (libjpeg's script: 10); NVIDIA's nvImageCodec
# refuses more than 256 by default, after Cure53's audit of libjpeg-turbo, and so does the bridge.
MAX_JPEG_SCANS = 256
# Segments (APPn, COM, tables, scans) of one JPEG: a camera writes a few dozen; a 40 MB file of extended XMP
# in 64 KB chunks about 600. Libjpeg skips segments fast, but Pillow reads each header segment in Python and
# keeps every APPn and COM: a 16 MB file of 4 million empty comments took 6.5 s and 458 MB only to be
# checked here (jpeg_markers.header_segments listed them all), before Pillow's own pass.
MAX_JPEG_SEGMENTS = 4096
# Peak memory of decoding a phone's photo (JPEG, PNG, HEIC), per pixel, beyond what the bridge held before:
# Pillow's decoded image (4 bytes a pixel, RGB included), the RGB array (3) and the decoder's buffers.
# Measured (the process's own peak) 10.5 (RGBA and palette PNG, HEIC) and 10.2 (RGB JPEG) on a 12 MP photo;
# tests/unit/bridge/test_memory.py keeps them within this bound. Other decoders take more (12 MP gradients:
# AVIF 12.8, CMYK JPEG and 16-bit PNG 14, WebP 18.4, whose decoder keeps a whole RGBA canvas beside Pillow's
# image); the bound every format's whole job keeps is HANDLER_BYTES_PER_PIXEL (fluxfill.bridge.settings).
INTAKE_BYTES_PER_PIXEL = 11


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG, WEBP, HEIF or AVIF (Pillow's names) from the leading bytes; None for anything else."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return _iso_brand(data)
    return None


# What a user may pick that is no image taken here, by its leading bytes, to say what it is.
_TIFF = "a TIFF (or a camera's raw photo: DNG, CR2, NEF, ARW)"
_OTHER_MAGIC = {
    b"GIF87a": "a GIF",
    b"GIF89a": "a GIF",
    b"BM": "a BMP",
    b"II*\x00": _TIFF,
    b"MM\x00*": _TIFF,
    b"II+\x00": _TIFF,
    b"MM\x00+": _TIFF,
    b"\xff\x0a": "a JPEG XL",
    b"\x00\x00\x00\x0cJXL \r\n\x87\n": "a JPEG XL",
    b"%PDF-": "a PDF",
    b"\x1f\x8b": "gzip-compressed data",
    b"PK\x03\x04": "a ZIP archive",
}


def other_format(data: bytes) -> str | None:
    """What a file the bridge does not take is, when its leading bytes say (for the refusal's sentence): an
    app's upload that went wrong is often nothing, or the error page of a download that failed."""
    if not data:
        return "empty (0 bytes)"
    for magic, name in _OTHER_MAGIC.items():
        if data.startswith(magic):
            return name
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "an SVG"
    if text[:14].lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if data[4:8] == b"ftyp":
        return f"a video or another ISO media file (brand {data[8:12].decode('latin-1')!r})"
    return None


def _iso_brand(data: bytes) -> str | None:
    box_end = min(int.from_bytes(data[:4], "big"), len(data), 4096)
    # The major brand, then the compatible brands after the minor version.
    brands = {data[8:12]} | {data[at : at + 4] for at in range(16, box_end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    return "HEIF" if brands & _HEIF_BRANDS else None


def check_header(data: bytes, what: str, max_pixels: int) -> None:
    """Refuse the image as `read_photo` would unless its header parses and its pixel count is within
    `max_pixels`; nothing is decoded."""
    _as_browsers_read(lambda taken: _header(taken, what, max_pixels), data)


def _as_browsers_read(read: Callable[[bytes], T], data: bytes) -> T:
    """`read(data)`, and after a refusal as corrupt, `read` of the PNG without the chunks libpng and the
    browsers skip (fluxfill.bridge.png_repair), when it has any; the first refusal when that fails too."""
    try:
        return read(data)
    except PermanentJobError as error:
        refused = error
    repaired = png_repair.without_skipped_chunks(data) if refused.code is ErrorCode.CORRUPT_IMAGE else None
    if repaired is None:
        raise refused
    try:
        return read(repaired)
    except PermanentJobError:
        raise refused from None


def _header(data: bytes, what: str, max_pixels: int) -> tuple[Image.Image, str]:
    """The image as stored, only its header read (its pixel count checked), and its format."""
    kind = sniff_format(data)
    if kind is None:
        other = other_format(data)
        said = f"{other}, not {ACCEPTED}" if other else f"not {ACCEPTED} (by its first bytes)"
        raise PermanentJobError(ErrorCode.UNSUPPORTED_IMAGE_FORMAT, f"the {what} is {said}")
    if kind == "JPEG":
        _refuse_unreadable_jpeg(data, what)
    with _refusals(what, kind):
        image = exif_fallback.open_image(data, formats=[kind])
        width, height = image.size
        if width * height > max_pixels:
            raise PermanentJobError(
                ErrorCode.IMAGE_TOO_MANY_PIXELS,
                f"the {what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            )
    return image, kind


def _refuse_unreadable_jpeg(data: bytes, what: str) -> None:
    """A JPEG of a process no decoder here reads (12-bit samples, as medical and scientific cameras write;
    hierarchical coding) is a valid file of an unsupported kind, not a corrupt one: said so from its frame
    header, before Pillow, which would call it unidentifiable or fail in the decode. So is one of more
    segments than MAX_JPEG_SEGMENTS or scans than MAX_JPEG_SCANS, which would keep a reader busy for
    minutes."""
    # Counted first, bounded: everything after (the frame, Pillow) walks the header segments.
    counts = jpeg_markers.count_markers(data, at_most=MAX_JPEG_SEGMENTS)
    if counts.segments > MAX_JPEG_SEGMENTS:
        raise PermanentJobError(
            ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
            f"the {what} is a JPEG of more than {MAX_JPEG_SEGMENTS} marker segments (cameras write a few "
            "dozen), which would take seconds and hundreds of megabytes to read; save it again as a JPEG",
        )
    if counts.scans > MAX_JPEG_SCANS:
        raise PermanentJobError(
            ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
            f"the {what} is a progressive JPEG of more than {MAX_JPEG_SCANS} scans (phones write one, "
            "progressive encoders about ten), which would take minutes to decode; save it again as a JPEG",
        )
    header = jpeg_markers.frame(data)
    if header is not None and header.precision != 8:
        raise PermanentJobError(
            ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
            f"the {what} is a {header.precision}-bit JPEG; only 8-bit JPEGs, as phones and cameras write "
            "them, are accepted",
        )
    if header is not None and header.hierarchical:
        raise PermanentJobError(
            ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
            f"the {what} is a hierarchical JPEG, which no decoder here reads; save it as an ordinary JPEG",
        )


def _decoded(image: Image.Image, kind: str, what: str) -> int:
    """Decode the image `_header` opened; its EXIF orientation (read after decoding: a PNG's may follow its
    pixels)."""
    with _refusals(what, kind):
        image.load()
        return orientation.orientation_of(image)


@contextmanager
def _refusals(what: str, kind: str) -> Iterator[None]:
    """Pillow's and the codecs' failures to open or decode become specific refusals."""
    try:
        yield
    # Pillow's own bomb limit, should anything in the process set one again (see MAX_IMAGE_PIXELS above);
    # under `-W error` its warning is raised too.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PermanentJobError(
            ErrorCode.IMAGE_TOO_MANY_PIXELS, f"the {what} is too large: {error}"
        ) from None
    except UnidentifiedImageError:
        raise PermanentJobError(
            ErrorCode.CORRUPT_IMAGE, f"the {what} starts as {kind} but does not parse as one"
        ) from None
    except model_rgb.DECODE_ERRORS as error:
        raise PermanentJobError(
            ErrorCode.CORRUPT_IMAGE, f"the {what} ({kind}) cannot be decoded: {error or type(error).__name__}"
        ) from None


@dataclass(frozen=True)
class Photo:
    """The upright photo the model sees, and what its result needs to keep the original's format."""

    # Upright, height x width x 3, transparency composited over white; the model's edit is written into it
    # when it may be written (fluxfill.bridge.context.edited), so a job holds one full-size image.
    pixels: npt.NDArray[np.uint8]
    format: str  # by the leading bytes: JPEG, PNG, WEBP, HEIF or AVIF
    orientation: int  # EXIF orientation (1-8) that turned the stored grid upright
    original: bytes  # as uploaded: a JPEG result is spliced into these
    alpha: npt.NDArray[np.uint8] | None = None  # upright transparency, when the original had any
    lossless: bool = False  # a WebP original coded losslessly
    exif: bytes | None = None
    icc_profile: bytes | None = None  # when it describes RGB or grey pixels
    greyscale: bool = False
    # Images in the file (an animated PNG or WebP, an image sequence: the first is edited; a HEIC's burst or
    # collection: its primary image, the one viewers show)
    frames: int = 1
    colour_note: str = ""  # how the colours of a HEIC or AVIF described only by code points are carried
    # A PNG's chunks that say how its colours are shown beside its profile (fluxfill.bridge.png_colour)
    png_colour: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def preview_profile(self) -> bytes | None:
        """The JPEG preview's colour profile: the photo's, else the one a PNG's gAMA and cHRM mean (viewers
        apply them to the PNG; a JPEG without a profile is shown as sRGB, lighter or darker)."""
        return self.icc_profile or png_colour.gamma_profile(self.png_colour)


def read_photo(data: bytes, max_pixels: int, what: str = "original photo") -> Photo:
    """The upright photo, its format, orientation and metadata; refused with a specific code when bad
    (`what` names it in the refusal's sentence).

    Memory: the decoded image and the returned array, and nothing else of full size (a 50 MP RGBA photo took
    1.15 GB when transparency was composited on whole-image copies): see `INTAKE_BYTES_PER_PIXEL`.
    """
    return _as_browsers_read(lambda taken: _read_photo(taken, max_pixels, what), data)


def _read_photo(data: bytes, max_pixels: int, what: str) -> Photo:
    stored, kind = _header(data, what, max_pixels)
    if kind == "JPEG":
        turn = orientation.orientation_of(stored)  # a JPEG's EXIF is read with its header
        pixels = jpeg_decode.decode_upright(data, stored, turn)
        if pixels is not None:
            icc_profile, _ = photo_colours.embedded_or_coded(stored, kind, data)  # the one rule for a profile
            return Photo(pixels, kind, turn, data, exif=stored.info.get("exif"), icc_profile=icc_profile)
    turn = _decoded(stored, kind, what)
    exif = stored.info.get("exif")
    icc_profile, colour_note = photo_colours.embedded_or_coded(stored, kind, data)
    greyscale = model_rgb.is_greyscale(stored)
    frames = int(getattr(stored, "n_frames", 1))
    image = orientation.upright(model_rgb.eight_bit(stored), turn)
    del stored  # a turned photo is a copy: the stored one goes before the array is made
    if image.mode != "RGBA" and (image.mode == "P" or model_rgb.has_transparency(image)):
        # Converted to RGBA here, not inside model_rgb, so that the image before it is freed at once
        # (INTAKE_BYTES_PER_PIXEL: a palette photo's 1 byte a pixel more otherwise).
        image = image.convert("RGBA")
    pixels, alpha = model_rgb.model_rgb(image)
    return Photo(
        pixels,
        kind,
        turn,
        data,
        alpha=alpha,
        lossless=kind == "WEBP" and _webp_lossless(data),
        exif=exif,
        icc_profile=icc_profile,
        greyscale=greyscale,
        frames=frames,
        colour_note=colour_note,
        png_colour=png_colour.colour_chunks(data) if kind == "PNG" else (),
    )


def decode_photo(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """The upright photo as height x width x 3 uint8 (`read_photo`'s pixels)."""
    return read_photo(data, max_pixels).pixels


def _webp_lossless(data: bytes) -> bool:
    # The simple format starts with its one image chunk; the extended one (VP8X) lists chunks after it.
    return data[12:16] == b"VP8L" or (data[12:16] == b"VP8X" and b"VP8L" in data[30:4096])


def decode_mask(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """The upright mask as height x width uint8 (>= 128 means repaint)."""
    return _as_browsers_read(lambda taken: _decode_mask(taken, max_pixels), data)


def _decode_mask(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    stored, kind = _header(data, "mask", max_pixels)
    turn = _decoded(stored, kind, "mask")
    image = orientation.upright(model_rgb.eight_bit(stored), turn)
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if "A" in image.mode:
        alpha = np.asarray(image.getchannel("A"), dtype=np.uint8)
        if alpha.min() < 255:
            return alpha
    return np.asarray(image.convert("L"), dtype=np.uint8)


def fit_mask(mask: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """The mask at the photo's size (geometry.fit_mask: the client's rule too), else refused; refused too when
    it selects nothing to repaint (an app's mask painted darker than mid-grey, or exported empty, gave the
    photo back unchanged as done, after the whole photo went to Triton for nothing)."""
    try:
        fitted = geometry.fit_mask(mask, height, width)
    except geometry.MaskSizeError as error:
        raise PermanentJobError(ErrorCode.MASK_SIZE_MISMATCH, str(error)) from None
    largest = int(fitted.max(initial=0))
    if largest < MASK_THRESHOLD:
        raise PermanentJobError(
            ErrorCode.MASK_EMPTY,
            f"the mask selects no pixel to repaint: its largest value is {largest}, and a pixel is repainted "
            f"from {MASK_THRESHOLD} of 255 up (white or light grey; opaque, in a mask with transparency)"
            + (f"; {ZERO_ONE_MASK_HINT}" if largest == 1 else ""),
        )
    return fitted


def _shared_rgb(pixels: npt.NDArray[np.uint8]) -> Image.Image:
    """An RGB image over the array's own memory (fromarray copies: 36 MB at 12 MP); a copy only when the
    array is not contiguous."""
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    return Image.frombuffer("RGB", (width, height), pixels, "raw", "RGB", 0, 1)


def encode_preview(
    image: npt.NDArray[np.uint8], max_side: int, turn: int = 1, icc_profile: bytes | None = None
) -> bytes:
    """A JPEG preview of upright `image` whose longer side is at most `max_side` pixels; `turn`: the EXIF
    orientation of the stored grid `image` may be a view of (orientation.upright_view), which is then reduced
    as it is stored and turned small (a contiguous copy of a turned 12 MP view costs 80-150 ms).
    `icc_profile`: the photo's, carried when it describes RGB (a phone's Display P3 would otherwise show
    shifted in the app)."""
    stored = orientation.stored_layout(image, turn)
    preview = _shared_rgb(image if stored is None else stored)
    # Box-reduced by the largest whole factor first, then Lanczos: half the CPU of Lanczos from a 1 MP
    # photo (Pillow's default gap reduces only from 4x), 0.6-1.1 grey levels from a plain Lanczos on average
    # on noisy photos (the default's own: 0-0.9).
    preview.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=1.0)
    if stored is not None:
        preview = orientation.upright(preview, turn)
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85, **photo_colours.save_options(None, icc_profile, "RGB"))
    return buffer.getvalue()
