"""How a PNG's colours are to be shown, beside its ICC profile: carried from the original onto a PNG result.

A PNG describes its colours by chunks before its pixel data: `cICP` (code points: the PNG third edition's tag
for HDR and wide-gamut images), `iCCP` (an ICC profile: carried as `Photo.icc_profile`), `sRGB` (with its
rendering intent), and `gAMA` with `cHRM` (a gamma and primaries). Browsers and phones honour them (`gAMA`
where there is no `sRGB` or profile), so a result without them is shown lighter or darker than the original,
its unedited pixels too: a tool's linear (gamma 1.0) export, or an old Mac's gamma 1.8. They are carried byte
for byte, in the original's order. A JPEG has no such chunks: the preview of a PNG described by `gAMA` (and
`cHRM`) alone gets the ICC profile they mean (`gamma_profile`), or it would be shown as sRGB.
"""

import struct

import numpy as np

from fluxfill.bridge import png_repair
from fluxfill.bridge.colour_profile import BT709, Primaries, display_profile

# The colour chunks carried, with the size of their data (one of a wrong size is one decoders skip too).
COLOUR_CHUNKS = {b"cICP": 4, b"sRGB": 1, b"gAMA": 4, b"cHRM": 32}
# Colour chunks come before the pixel data; a file with more chunks than this before it is not read further
# (Pillow has read them all before this runs; this bounds only our own walk).
MAX_CHUNKS_BEFORE_PIXELS = 4096


def colour_chunks(data: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The original's colour chunks (type, data) in file order, the first of each type, as read before its
    pixel data (`IDAT`); none for a file that is no PNG."""
    if not png_repair.is_png(data):
        return ()
    found: dict[bytes, bytes] = {}
    position = png_repair.SIGNATURE_SIZE
    for _ in range(MAX_CHUNKS_BEFORE_PIXELS):
        if position + 8 > len(data):
            break
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            break
        chunk = data[position + 8 : position + 8 + length]
        if len(chunk) < length:
            break  # the file ends inside the chunk
        if COLOUR_CHUNKS.get(kind) == length and kind not in found:
            found[kind] = chunk
        position += 12 + length
    return tuple(found.items())


# gAMA values libpng takes (it ignores the chunk outside them, as browsers then do): gamma 0.16 to 6250.
_GAMA_RANGE = (16, 625_000)
# A gamma this close to 2.2 with sRGB's primaries is shown as a JPEG without a profile is (sRGB), near enough.
_NEAR_SRGB_GAMMA = 0.02


def gamma_profile(chunks: tuple[tuple[bytes, bytes], ...]) -> bytes | None:
    """The ICC profile a PNG's `gAMA` (and `cHRM`, else sRGB's primaries) means, for a JPEG made of its
    pixels; None when those chunks do not decide how it is shown (an `sRGB` or `cICP` chunk does, or there is
    no usable `gAMA`) or say sRGB near enough. The photo's ICC profile, when it has one, comes before this."""
    found = dict(chunks)
    gama = found.get(b"gAMA")
    if gama is None or b"sRGB" in found or b"cICP" in found:
        return None
    (value,) = struct.unpack(">I", gama)
    if not _GAMA_RANGE[0] <= value <= _GAMA_RANGE[1]:
        return None
    gamma = 100_000 / value
    primaries = _primaries(found.get(b"cHRM"))
    if primaries is None and abs(gamma - 2.2) <= _NEAR_SRGB_GAMMA:
        return None
    try:
        return display_profile(primaries or BT709, gamma)
    except np.linalg.LinAlgError:
        return display_profile(BT709, gamma)  # primaries that span no colour space: ignored, as decoders do


def _primaries(chrm: bytes | None) -> Primaries | None:
    """cHRM's white point and primaries (x, y each, in 100,000ths); None without one or with a y of 0."""
    if chrm is None:
        return None
    values = [value / 100_000 for value in struct.unpack(">8I", chrm)]
    if not all(values[1::2]):
        return None
    wx, wy, rx, ry, gx, gy, bx, by = values
    return Primaries("PNG cHRM", (rx, ry), (gx, gy), (bx, by), (wx, wy))
