"""Any picture as the 8-bit RGB the model takes, made one way by the bridge's intake and the client alike (one
file, one picture, whether it goes through `fluxfill infer` or a job); and back, for a result that keeps the
original's transparency.

- 16-bit greyscale is scaled to 8 bits (Pillow's own conversion clips it: all but the darkest 1/256 white).
- Transparency is composited over white (what a phone's gallery shows behind a cut-out).
- A result that keeps the original's transparency stores the colours that, shown over white, give what the
  model painted: the composite inverted (`straight`), not the composited colours themselves, which would
  apply the alpha a second time (every semi-transparent pixel lighter).
"""

import struct

import numpy as np
import numpy.typing as npt
from PIL import Image

# Rows composited at a time: the temporaries stay a few MB whatever the photo's size.
_STRIP_ROWS = 256
# Pixels un-composited at a time (`straight`): its indices stay a few MB at any size.
_CHUNK_PIXELS = 1 << 20
# What Pillow and its codecs raise for a file they cannot open or decode, one rule for the bridge's intake and
# the client: OSError (a file cut short, UnidentifiedImageError), SyntaxError (a broken PNG chunk, an AVIF's
# data), ValueError (libheif's invalid input, a PNG chunk over Pillow's cap), RuntimeError (libheif's security
# limits, the AVIF decoder), EOFError; and what Pillow itself takes for data at fault as it opens a file
# (ImageFile's list: IndexError, TypeError, KeyError, struct.error), which a PNG's chunks after its pixel data
# raise unwrapped as it decodes (an empty iCCP: IndexError, a job failed as an unexpected error).
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    RuntimeError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
)
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def model_rgb(image: Image.Image) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None]:
    """The picture as the model's height x width x 3 RGB, and its alpha when it has real transparency (the
    bridge's intake and the client both take it from here)."""
    image = eight_bit(image)
    if image.mode == "P" or has_transparency(image):
        return over_white(image)
    # convert() copies even an RGB image: a 12 MP photo is 36 MB, so skip it when the mode is right.
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8), None


def is_greyscale(image: Image.Image) -> bool:
    """Whether a decoded photo's pixels are grey by its mode (a picture made of it stays grey: whatever
    colour the model painted into a black-and-white photo is not the photo's)."""
    return image.mode in ("1", "L", "LA", "La") or image.mode in SIXTEEN_BIT_MODES


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale as 8-bit (its top byte); any other picture as it is."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.uint32)
        return Image.fromarray((values >> 8).clip(0, 255).astype(np.uint8), mode="L")
    return image


def has_transparency(image: Image.Image) -> bool:
    """Whether the image carries an alpha channel or a transparent colour (its pixels may be all opaque)."""
    return image.mode in ALPHA_MODES or "transparency" in image.info


def over_white(image: Image.Image) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None]:
    """The image composited over white (height x width x 3), strip by strip into the one full-size output
    array, and its alpha channel, unless it is opaque everywhere (None)."""
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    width, height = rgba.size
    out = np.empty((height, width, 3), np.uint8)
    alpha_out = np.empty((height, width), np.uint8)
    for top in range(0, height, _STRIP_ROWS):
        bottom = min(height, top + _STRIP_ROWS)
        strip = np.asarray(rgba.crop((0, top, width, bottom)), dtype=np.uint16)
        alpha = strip[..., 3:]
        out[top:bottom] = (strip[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        alpha_out[top:bottom] = alpha[..., 0]
    return out, (alpha_out if alpha_out.min() < 255 else None)


def straight(shown: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8]) -> Image.Image:
    """The RGBA image whose colours, shown over white through `alpha`, are `shown` (height x width x 3: a
    photo as `over_white` gave it, with the model's edit in it).

    Each pixel gets the original's colour back within the rounding of one level on screen (the composite
    rounds to a level, which a pixel 1/a opaque shows 1/a of), and the edit's colours as the model painted
    them, as far as the alpha lets them show. Opaque and fully clear pixels are kept as they are (no colour
    shows through a clear one), so a cut-out costs its soft edges alone; a chunk of pixels at a time.
    """
    colours = np.array(shown, dtype=np.uint8).reshape(-1, 3)  # a copy: `shown` is the caller's
    opacity = alpha.reshape(-1)
    for start in range(0, opacity.size, _CHUNK_PIXELS):
        chunk = slice(start, start + _CHUNK_PIXELS)
        partial = np.flatnonzero(opacity[chunk] - np.uint8(1) < 254) + start  # 1..254 (0 - 1 wraps to 255)
        if partial.size:
            index = (opacity[partial].astype(np.uint16) << 8)[:, None] | colours[partial]
            colours[partial] = _UNCOMPOSITED.take(index)
    image = Image.fromarray(colours.reshape(shown.shape))
    image.putalpha(Image.fromarray(alpha))
    return image


def _uncomposited() -> npt.NDArray[np.uint8]:
    """colour[a << 8 | shown]: the colour that shows as `shown` over white through alpha `a`, rounded.

    `over_white` composites shown = (colour * a + 255 * (255 - a) + 127) // 255, so colour is
    255 * (shown - 255 + a) / a; a shown value darker than 255 - a (an edit where the photo is nearly clear)
    has no such colour: black, the nearest."""
    opacity = np.arange(256, dtype=np.int32)[:, None]
    shown = np.arange(256, dtype=np.int32)[None, :]
    colour = (2 * 255 * (shown - 255 + opacity) + opacity) // np.maximum(2 * opacity, 1)
    return np.where(opacity > 0, np.clip(colour, 0, 255), shown).astype(np.uint8).ravel()


_UNCOMPOSITED = _uncomposited()


def picture(
    edited: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8] | None, greyscale: bool
) -> Image.Image:
    """A picture made of the model's upright RGB (height x width x 3) for a photo: RGB, or L for a greyscale
    photo (whatever colour the model painted is not the photo's); with the photo's `alpha` (RGBA or LA) when
    given, the colours behind it (straight), not those shown over white. The bridge's results and
    `fluxfill infer`'s output alike."""
    image = Image.fromarray(edited) if alpha is None else straight(edited, alpha)
    if greyscale:
        image = image.convert("LA" if alpha is not None else "L")
    return image
