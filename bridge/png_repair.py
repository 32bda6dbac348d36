"""A PNG as libpng and the browsers read it: without the ancillary chunks they skip and Pillow refuses.

A PNG's ancillary chunks (its metadata: the type's first letter lowercase) do not hold its pixels. libpng
skips one whose checksum is wrong or whose data breaks the standard (a `pHYs` of 8 bytes, a `tRNS` of more
entries than the palette, an `iCCP` or `zTXt` of another compression method) with a warning, and shows the
image; so do browsers, and a broken animation shows its `IDAT` image. Pillow refuses the whole file instead
("Truncated pHYs chunk", "broken PNG file", "APNG contains frame sequence errors"): a photo every browser
shows was refused as `corrupt_image` (found by fuzzing chunk by chunk). After such a refusal the photo is read
again as `without_skipped_chunks` gives it: the same file without those chunks, every critical chunk (the
header, the palette, the pixel data) as it was, so a PNG whose pixels are broken is still refused.

Text and a profile are skipped too where they inflate past what Pillow holds (`MAX_TEXT_CHUNK` a chunk,
`MAX_TEXT_MEMORY` of text in all): libpng skips a chunk it will not hold (8 MB by default) and browsers do not
read text, but Pillow refused the photo ("Decompressed data too large"): an editor's XMP history, or a bomb.
"""

import struct
import zlib
from collections.abc import Iterator, Sequence

from PIL import PngImagePlugin

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIGNATURE_SIZE = len(_SIGNATURE)
_ANIMATION = frozenset({b"acTL", b"fcTL", b"fdAT"})
# The chunks Pillow inflates or holds as text (bounded: fluxfill.bridge.png_repair._past_pillows_text_bounds).
_INFLATED = frozenset({b"tEXt", b"zTXt", b"iTXt", b"iCCP"})
# Ancillary chunks of a fixed size, as the standard gives it (Pillow refuses them at any other size).
_FIXED_SIZES = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"acTL": 8, b"fcTL": 26}
# tRNS: its size by colour type (greyscale, truecolour); a palette's is one byte an entry at most, and the
# types with an alpha channel take none.
_TRNS_SIZES = {0: 2, 2: 6}
_LONGEST_NAME = 79  # of an iCCP profile or a zTXt keyword
MAX_CHUNKS = 100_000  # a hostile file of millions of empty chunks is not walked further


def without_skipped_chunks(data: bytes) -> bytes | None:
    """The PNG without every ancillary chunk libpng skips (its checksum wrong, its data against the
    standard), and without its animation (read after Pillow refused the file, the animation may be what it
    refused: browsers then show the IDAT image); None when there is no such chunk, or the file is no PNG whose
    chunks can be walked to its end."""
    chunks = list(_chunks(data))
    if not chunks or chunks[-1][0] != b"IEND":
        return None
    colour_type = chunks[0][1][9] if chunks[0][0] == b"IHDR" and len(chunks[0][1]) == 13 else None
    palette = next((len(body) // 3 for kind, body, _ in chunks if kind == b"PLTE"), 0)
    skipped = {
        index
        for index, (kind, body, crc_ok) in enumerate(chunks)
        # The animation whole: its sequence is checked across chunks, and its first image is the IDAT one.
        if kind in _ANIMATION
        or (_is_ancillary(kind) and not (crc_ok and _valid(kind, body, colour_type, palette)))
    }
    skipped |= _past_pillows_text_bounds(chunks, skipped)
    if not skipped:
        return None
    kept = (chunk for index, chunk in enumerate(chunks) if index not in skipped)
    return _SIGNATURE + b"".join(_chunk(kind, body) for kind, body, _ in kept)


def is_png(data: bytes) -> bool:
    """Whether the bytes start as a PNG."""
    return data.startswith(_SIGNATURE)


def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes, bool]]:
    """(type, data, checksum right) of each chunk up to IEND; stops where a chunk runs past the file."""
    if not is_png(data):
        return
    at = SIGNATURE_SIZE
    for _ in range(MAX_CHUNKS):
        if at + 12 > len(data):
            return
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 8 + length
        if end + 4 > len(data):
            return
        body = data[at + 8 : end]
        yield kind, body, zlib.crc32(kind + body) == int.from_bytes(data[end : end + 4], "big")
        if kind == b"IEND":
            return
        at = end + 4


def _is_ancillary(kind: bytes) -> bool:
    return len(kind) == 4 and kind.isalpha() and kind[:1].islower()


def _valid(kind: bytes, body: bytes, colour_type: int | None, palette: int) -> bool:
    """Whether Pillow and libpng take the ancillary chunk's data (unknown types: yes, both skip them)."""
    if kind in _FIXED_SIZES:
        return len(body) == _FIXED_SIZES[kind]
    if kind == b"tRNS":
        if colour_type == 3:
            return len(body) <= palette
        return len(body) == _TRNS_SIZES.get(colour_type, -1) if colour_type is not None else True
    if kind in (b"iCCP", b"zTXt"):  # a name of 1 to 79 bytes, its NUL, compression method 0 (zlib)
        name_end = body.find(b"\x00", 0, _LONGEST_NAME + 1)
        return name_end > 0 and body[name_end + 1 : name_end + 2] == b"\x00"
    return True


def _past_pillows_text_bounds(chunks: Sequence[tuple[bytes, bytes, bool]], skipped: set[int]) -> set[int]:
    """The text chunks and profiles, of those kept, that Pillow refuses the file for: one that inflates past
    `MAX_TEXT_CHUNK`, and those past `MAX_TEXT_MEMORY` in all. Counted in bytes and with the profiles (Pillow
    counts text characters): never less than Pillow, and the inflating a hostile file costs is bounded by
    the sum. Read at the call: the bridge raises the first (fluxfill.bridge.photo_colours)."""
    one_chunk, left = PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    past = set()
    for index, (kind, body, _) in enumerate(chunks):
        if index in skipped or kind not in _INFLATED:
            continue
        data, compressed = _text_data(kind, body)
        # Pillow bounds only what it inflates by the first: stored text is in the file already.
        bound = min(one_chunk, left) if compressed else left
        size = _inflated_size(data, bound) if compressed else len(data)
        if size > bound:
            past.add(index)
        else:
            left -= size
    return past


def _text_data(kind: bytes, body: bytes) -> tuple[bytes, bool]:
    """A text chunk's text or a profile's zlib data (empty where the chunk has none), and whether it is
    compressed."""
    name_end = body.find(b"\x00")
    if name_end < 0:
        return b"", False
    if kind == b"tEXt":
        return body[name_end + 1 :], False
    if kind != b"iTXt":  # zTXt, iCCP: the compression method's byte, then the zlib data
        return body[name_end + 2 :], True
    # iTXt: the compression flag and method, then the language tag and the translated keyword, each NUL-ended.
    compressed = body[name_end + 1 : name_end + 2] == b"\x01"
    language_end = body.find(b"\x00", name_end + 3)
    translated_end = body.find(b"\x00", language_end + 1) if language_end >= 0 else -1
    return (body[translated_end + 1 :] if translated_end >= 0 else b""), compressed


def _inflated_size(data: bytes, bound: int) -> int:
    """zlib data's size inflated, counted to `bound` + 1 at most (data that does not inflate Pillow holds as
    nothing)."""
    try:
        return len(zlib.decompressobj().decompress(data, bound + 1))
    except zlib.error:
        return 0


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
