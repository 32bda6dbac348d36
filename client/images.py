"""Photos and masks from files, PIL images, arrays or boxes into the arrays the model takes.

A photo becomes the RGB the bridge would give the model for the same file (fluxfill.bridge.model_rgb): upright
by its EXIF, 16-bit greyscale scaled to 8 bits, transparency composited over white. An output made of it
keeps what of the photo a job's result keeps, where its format holds it (save_rgb): transparency, colour
profile, EXIF.

A mask marks the pixels to repaint with values >= 128. It can be given as
- a mask image of any mode (L, 1, P, RGB, I;16, ...), white = repaint;
- an RGBA or LA image, whose transparent area is repainted (the convention of "erase, then fill");
- a box `x,y,w,h` in pixels of the photo.
"""

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image

from fluxfill.bridge import (
    exif_fallback,
    file_head,
    model_rgb,
    orientation,
    photo_colours,
    png_repair,
    stale_metadata,
)
from fluxfill.client.errors import InvalidInputError
from fluxfill.inpaint.contract import MASK_THRESHOLD, MAX_INPUT_PIXELS_CEILING, ZERO_ONE_MASK_HINT
from fluxfill.inpaint.geometry import MaskSizeError, fit_mask

# iPhones store photos as HEIC: with pillow-heif (client and bridge extras) they open like any other image.
with contextlib.suppress(ImportError):
    import pillow_heif

    pillow_heif.register_heif_opener()

RGBArray: TypeAlias = npt.NDArray[np.uint8]
MaskArray: TypeAlias = npt.NDArray[np.uint8]
ImageLike: TypeAlias = str | os.PathLike[str] | Image.Image | npt.NDArray[Any]
Box: TypeAlias = tuple[int, int, int, int]
MaskLike: TypeAlias = ImageLike | Box

# A mask selecting more than this share of the photo is most likely inverted (see selection_warning). An
# erased area is seldom most of a photo, strokes on a transparent layer nearly always leave most of it clear.
MOSTLY_SELECTED = 0.9
MOSTLY_SELECTED_BY_ALPHA = 0.5
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
# How much of a photo file is read for its colour description beyond what Pillow decoded: an AVIF's nclx box
# is looked for in its first 64 KB (colour_profile.nclx_in), a PNG's colour chunks precede its pixels.
COLOUR_DESCRIPTION_BYTES = 4 << 20
# Output formats (Pillow's names) that hold transparency, and those that hold an ICC profile and EXIF: a
# photo's are written into them (save_rgb); a JPEG output is the RGB over white.
_TRANSPARENT_FORMATS = frozenset({"PNG", "WEBP", "TIFF", "AVIF", "HEIF"})
_METADATA_FORMATS = _TRANSPARENT_FORMATS | {"JPEG"}
# Formats whose files hold greyscale pixels (Pillow writes a WebP, AVIF or HEIF of them as RGB).
_GREYSCALE_FORMATS = frozenset({"JPEG", "PNG", "TIFF"})
# The qualities of lossy outputs: the bridge's re-encoded JPEG and lossy WebP results' (the encoders'
# defaults, JPEG 75, WebP 80, AVIF 75, HEIF 50, blur detail everywhere, not only where the photo was edited).
OUTPUT_QUALITY = {"JPEG": 95, "WEBP": 90, "AVIF": 90, "HEIF": 90}
_BOX = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")
# Digits, signs, points, commas and spaces alone: a box, meant as one even when mistyped.
_BOX_LIKE = re.compile(r"^[\s\d.,+-]+$")


class Photo(NamedTuple):
    """A photo file as the model is shown it (load_rgb), and what of it an output keeps (save_rgb): its
    upright transparency, when it has real transparency, the colour profile its pixels are shown by
    (fluxfill.bridge.photo_colours), when that is not sRGB, its EXIF as stored, and whether it is greyscale
    (its profile then one of grey pixels, when it has one)."""

    rgb: RGBArray
    alpha: MaskArray | None
    icc_profile: bytes | None
    exif: bytes | None
    greyscale: bool = False


class PixelLimit(NamedTuple):
    """The most pixels an image may have, and what the refusal of more says after "more than"."""

    pixels: int
    than: str


# No configuration of the model takes more (its `max_input_pixels` may be set up to this).
EVERY_SERVER = PixelLimit(MAX_INPUT_PIXELS_CEILING, f"any fluxfill server takes ({MAX_INPUT_PIXELS_CEILING})")


def open_image(path: str | os.PathLike[str], limit: PixelLimit = EVERY_SERVER) -> Image.Image:
    """Open and decode an image file, turned upright as its EXIF orientation says; refused from its header,
    before it is decoded, when it has more pixels than `limit`."""
    stored = _open_stored(path, limit)
    # Phones store rotation in EXIF: apply it so mask and photo line up as the user saw them, as the bridge
    # does (EXIF alone, as viewers; EXIF that does not parse says nothing of it).
    return orientation.upright(stored, orientation.orientation_of(stored))


def _open_stored(path: str | os.PathLike[str], limit: PixelLimit = EVERY_SERVER) -> Image.Image:
    """An image file decoded as it is stored (its format and metadata still on it); a PNG past the chunks
    libpng skips, as the bridge reads it (fluxfill.bridge.png_repair)."""
    path = Path(path)
    try:
        return _decoded(path, path, limit)
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path}: is a directory, not an image") from None
    except Image.DecompressionBombError as error:
        raise InvalidInputError(
            f"{path}: more pixels than Pillow opens in this process (PIL.Image.MAX_IMAGE_PIXELS): {error}"
        ) from None
    except model_rgb.DECODE_ERRORS as error:  # the bridge refuses the same files as corrupt_image
        refused = InvalidInputError(f"{path}: not a readable image ({error or type(error).__name__})")
    repaired = png_repair.without_skipped_chunks(file_head.bytes_if(path, png_repair.is_png))
    if repaired is not None:
        with contextlib.suppress(*model_rgb.DECODE_ERRORS):
            return _decoded(repaired, path, limit)
    raise refused


def _decoded(source: Path | bytes, path: Path, limit: PixelLimit) -> Image.Image:
    image = exif_fallback.open_image(source)
    try:
        _refuse_beyond(path, image.size, limit)
        image.load()
    except BaseException:
        image.close()  # the file, at once (a refused or broken one too)
        raise
    return image


def _refuse_beyond(path: Path, size: tuple[int, int], limit: PixelLimit) -> None:
    """Refused from the header, before 1.2 GB and more are decoded."""
    width, height = size
    if width * height > limit.pixels:
        raise InvalidInputError(
            f"{path}: the image is {width}x{height} = {width * height} pixels, more than {limit.than}"
        )


def load_rgb(path: str | os.PathLike[str]) -> RGBArray:
    """A photo file as height x width x 3 uint8 RGB, as the bridge shows it to the model: 16-bit greyscale
    scaled to 8 bits, transparency over white (fluxfill.bridge.model_rgb)."""
    return load_photo(path).rgb


def load_photo(path: str | os.PathLike[str]) -> Photo:
    """A photo file as load_rgb gives it, with what an output of it keeps (save_rgb)."""
    stored = _open_stored(path)
    try:
        # The file's leading bytes, for what the decoded image does not say (an AVIF's nclx box, a PNG's
        # colour chunks): a file may go on for gigabytes after its image.
        with Path(path).open("rb") as file:
            leading = file.read(COLOUR_DESCRIPTION_BYTES)
    except OSError as error:
        raise InvalidInputError(f"{path}: not a readable image ({error})") from None
    greyscale = model_rgb.is_greyscale(stored)
    if greyscale:
        profile = photo_colours.grey_profile(stored)
    else:
        profile = photo_colours.rgb_profile(stored, stored.format or "", leading)
    exif = stored.info.get("exif") or None
    upright = orientation.upright(stored, orientation.orientation_of(stored))
    return Photo(*model_rgb.model_rgb(upright), profile, exif, greyscale)


def to_rgb(image: ImageLike) -> RGBArray:
    """A photo (path, PIL image, or uint8 array H x W x 3, H x W x 4 with alpha, or H x W) as height x width
    x 3 RGB, as the bridge shows it to the model (load_rgb)."""
    if isinstance(image, Image.Image):
        return model_rgb.model_rgb(image)[0]
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InvalidInputError(f"image array must be uint8, got {image.dtype}")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] == 4:
            return model_rgb.model_rgb(Image.fromarray(image, "RGBA"))[0]
        if image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image)
        raise InvalidInputError(f"image array must be H x W x 3, got shape {list(image.shape)}")
    return load_rgb(image)


def mask_from_image(image: Image.Image) -> MaskArray:
    """A mask image of any mode as 0/255: transparent repaints in RGBA/LA, else white (>= 128) repaints."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        return np.where(np.asarray(image.getchannel("A")) < MASK_THRESHOLD, 255, 0).astype(np.uint8)
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "F"}:
        # 16-bit and float masks: scale by their own range so "white" means the brightest value.
        values = np.asarray(image, dtype=np.float64)
        top = values.max()
        return np.where(top > 0 and values >= top / 2, 255, 0).astype(np.uint8)
    grey = np.asarray(image.convert("L"))
    return np.where(grey >= MASK_THRESHOLD, 255, 0).astype(np.uint8)


def parse_box(text: str) -> Box:
    """`x,y,w,h` in pixels; raises InvalidInputError otherwise."""
    match = _BOX.match(text)
    if match is None:
        raise InvalidInputError(f"box must be x,y,w,h in whole pixels, got {text!r}")
    x, y, w, h = (int(group) for group in match.groups())
    return x, y, w, h


def mask_from_box(box: Box, height: int, width: int) -> MaskArray:
    """A height x width mask repainting the box (x, y, w, h), which must lie inside the photo."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise InvalidInputError(f"box {x},{y},{w},{h} is empty: width and height must be positive")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise InvalidInputError(f"box {x},{y},{w},{h} does not fit inside the {width}x{height} photo")
    mask = np.zeros((height, width), np.uint8)
    mask[y : y + h, x : x + w] = 255
    return mask


def mask_argument(text: str) -> Box | Path:
    """A command line's MASK: the file of that name when there is one, else a box `x,y,w,h`. Numbers and
    commas that make no box (decimals, three or five numbers) are refused as a box, not looked for as a
    file ("1.5,2,3,4: no such file" said nothing of the box)."""
    if Path(text).exists():
        return Path(text)
    if "," in text and _BOX_LIKE.match(text):
        return parse_box(text)
    return Path(text)


def to_mask(mask: MaskLike, height: int, width: int) -> MaskArray:
    """Any mask form as a height x width uint8 array the size of the photo; raises InvalidInputError."""
    if isinstance(mask, tuple):
        return mask_from_box(mask, height, width)
    if isinstance(mask, np.ndarray):
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[:, :, 0]
        if mask.ndim != 2:
            raise InvalidInputError(f"mask array must be H x W, got shape {list(mask.shape)}")
        if mask.dtype == np.bool_:
            return np.where(mask, 255, 0).astype(np.uint8)
        if mask.dtype != np.uint8:
            raise InvalidInputError(f"mask array must be uint8 or bool, got {mask.dtype}")
        # Arrays are the wire form: the server checks their shape against IMAGE and names the tensor.
        return mask
    array = mask_from_image(mask if isinstance(mask, Image.Image) else open_image(mask))
    try:
        # The bridge's rule too: a mask drawn on a scaled copy of the photo is scaled back to it.
        return fit_mask(array, height, width)
    except MaskSizeError as error:
        raise InvalidInputError(str(error)) from None


def checked_mask(
    mask: MaskLike, height: int, width: int, command: str, *, refuse_empty: bool = False
) -> MaskArray:
    """The mask for a height x width photo, as `to_mask` makes it, its file decoded once. A mask file that
    most likely does not say what its author meant gets one `fluxfill COMMAND: warning:` line
    (`selection_warning`); with `refuse_empty`, one that selects nothing raises InvalidInputError instead (a
    job's: the bridge fails it as mask_empty)."""
    if isinstance(mask, tuple) or not isinstance(mask, str | os.PathLike):
        return to_mask(mask, height, width)  # a box selects what it says; an image or array is the caller's
    image = open_image(mask)
    array = to_mask(image, height, width)
    from_alpha = uses_alpha(image)
    brightest = None if from_alpha or array.any() else int(np.asarray(image.convert("L")).max(initial=0))
    warning = selection_warning(array, from_alpha, brightest)
    if refuse_empty and warning is not None and not array.any():
        raise InvalidInputError(
            f"{warning}; the bridge would fail the job (mask_empty): nothing was submitted"
        )
    if warning is not None:
        sys.stderr.write(f"fluxfill {command}: warning: {warning}\n")
    return array


def uses_alpha(mask: Image.Image) -> bool:
    """Whether the mask is read from its transparency (repaint where transparent), not its brightness."""
    return mask.mode in _ALPHA_MODES or (mask.mode == "P" and "transparency" in mask.info)


def selection_warning(mask: MaskArray, from_alpha: bool, brightest: int | None = None) -> str | None:
    """A sentence when the mask most likely does not say what its author meant, else None.

    Nothing selected changes nothing (red strokes are 76 in grey, under the threshold of 128; a boolean array
    saved as 8-bit is 0s and 1s: `brightest`, the mask file's largest grey value, says which); almost
    everything selected is usually an inverted mask, most often strokes painted on a transparent layer.
    """
    share = float(np.count_nonzero(mask >= MASK_THRESHOLD)) / max(mask.size, 1)
    if share == 0.0:
        if from_alpha:
            return "the mask is opaque everywhere, so it selects nothing: transparent pixels mark the repaint"
        return (
            f"the mask selects nothing: pixels with a grey value of at least {MASK_THRESHOLD} mark what to "
            "repaint (white strokes; pure red is only 76)"
            + (f"; {ZERO_ONE_MASK_HINT}" if brightest == 1 else "")
        )
    if share > (MOSTLY_SELECTED_BY_ALPHA if from_alpha else MOSTLY_SELECTED):
        if from_alpha:
            return (
                f"the mask selects {share:.0%} of the photo: an RGBA mask repaints its TRANSPARENT pixels, "
                "so strokes painted on a transparent layer select everything else"
            )
        return f"the mask selects {share:.0%} of the photo: white marks what to repaint, black what to keep"
    return None


def load_mask(path: str | os.PathLike[str]) -> MaskArray:
    """A mask file as height x width 0/255 uint8 (see the module docstring for the accepted forms)."""
    return mask_from_image(open_image(path))


def save_rgb(image: RGBArray, path: str | os.PathLike[str], photo: Photo | None = None) -> None:
    """Write an RGB array (the format follows the suffix) whole or not at all: a temporary file, renamed;
    JPEG, WebP, AVIF and HEIF at the bridge's qualities (OUTPUT_QUALITY). Given the `photo` it was made
    from (load_photo), it keeps what of the photo the format holds, as the bridge's result does: its
    transparency (the colours behind it: model_rgb.straight; a format without it gets the RGB as it is, over
    white), its colour profile, its EXIF without the orientation (the pixels are upright) or the thumbnail
    (fluxfill.bridge.stale_metadata), and a greyscale photo's greyscale (JPEG, PNG, TIFF)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        fmt = Image.registered_extensions().get(path.suffix.lower())
        picture = Image.fromarray(image)
        options: dict[str, Any] = {"quality": OUTPUT_QUALITY[fmt]} if fmt in OUTPUT_QUALITY else {}
        if photo is not None and fmt in _METADATA_FORMATS:
            alpha = photo.alpha
            if alpha is None or fmt not in _TRANSPARENT_FORMATS or alpha.shape != image.shape[:2]:
                alpha = None
            picture = model_rgb.picture(image, alpha, photo.greyscale and fmt in _GREYSCALE_FORMATS)
            limit = stale_metadata.JPEG_MAX_EXIF_BYTES if fmt == "JPEG" else None
            exif, _ = stale_metadata.carried_exif(photo.exif, upright=True, max_bytes=limit)
            options.update(photo_colours.save_options(exif, photo.icc_profile, picture.mode))
        picture.save(temporary, format=fmt, **options)
        os.replace(temporary, path)
    except (ValueError, KeyError) as error:
        # PIL raises ValueError/KeyError for a suffix it has no writer for.
        raise InvalidInputError(f"{path}: cannot write this format ({error})") from None
    except OSError as error:  # a full disk, or a format's own refusal (XBM holds no colour)
        raise InvalidInputError(f"{path}: cannot be written ({error.strerror or error})") from None
    finally:
        # Reached with the file still there only when the write failed or was interrupted (Ctrl-C).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
