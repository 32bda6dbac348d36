"""How a PNG's colours are to be shown, beside its ICC profile: carried from the original onto a PNG result.

A PNG describes its colours by chunks before its pixel data: `cICP` (code points: the PNG third edition's tag
for HDR and wide-gamut images), `iCCP` (an ICC profile: carried as `Photo.icc_profile`), `sRGB` (with its
rendering intent), and `gAMA` with `cHRM` (a gamma and primaries). Browsers and phones honour them (`gAMA`
where there is no `sRGB` or profile), so a result without them is shown lighter or darker than the original,
its unedited pixels too: a tool's linear (gamma 1.0) export, or an old Mac's gamma 1.8. They are carried byte
for byte, in the original's order.
"""

import struct

# The colour chunks carried, with the size of their data (one of a wrong size is one decoders skip too).
COLOUR_CHUNKS = {b"cICP": 4, b"sRGB": 1, b"gAMA": 4, b"cHRM": 32}
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Colour chunks come before the pixel data; a file with more chunks than this before it is not read further
# (Pillow has read them all before this runs; this bounds only our own walk).
MAX_CHUNKS_BEFORE_PIXELS = 4096


def colour_chunks(data: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The original's colour chunks (type, data) in file order, the first of each type, as read before its
    pixel data (`IDAT`); none for a file that is no PNG."""
    if not data.startswith(_SIGNATURE):
        return ()
    found: dict[bytes, bytes] = {}
    position = len(_SIGNATURE)
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
