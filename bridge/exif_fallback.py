"""Open a photo whose EXIF breaks Pillow's reader: without its EXIF, rather than not at all.

Pillow parses a photo's EXIF as it opens two of the formats taken, and fails the open on EXIF it cannot
handle, though every viewer shows the photo:
- AVIF: its EXIF is written anew when its Orientation is not the turn the irot and imir boxes give (HEIF's
  rule: the boxes win, and the EXIF is made to say so); EXIF Pillow reads and cannot write (a Model stored as
  a rational) raised AttributeError: the job an unexpected error, five times, then dead-lettered.
- JPEG: its resolution is read from EXIF; an XResolution of one byte raised IndexError, which Pillow reports
  as "cannot identify image file": a good photo refused as corrupt.
Such a file is opened again with its EXIF hidden from the reader: the type of its Exif items (AVIF) or the
identifier of its EXIF segments (JPEG) renamed in place, every other byte as it was. A JPEG's EXIF is then
given back to the image (`info["exif"]`), where its orientation is read, by the bridge's tolerant rule, and
where a result takes it from; an AVIF keeps the EXIF Pillow makes of its boxes' turn.
"""

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from fluxfill.bridge import file_head, jpeg_markers

_JPEG = b"\xff\xd8\xff"
_EXIF = b"Exif"
_HIDDEN = b"void"  # neither an item type of ISO/IEC 23008-12 nor an APP1 identifier: skipped by readers


def open_image(source: bytes | str | os.PathLike[str], formats: list[str] | None = None) -> Image.Image:
    """`Image.open(source)`, and for a photo that fails to open with its EXIF, the same photo without it; the
    first error when that fails too, or when the file holds no EXIF of either kind (any other format)."""
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats)
    except Exception:
        data = source if isinstance(source, bytes) else file_head.bytes_if(Path(source), jpeg_or_heif)
        bare = without_exif(data)
        if bare is None:
            raise
        with contextlib.suppress(Exception):
            image = Image.open(io.BytesIO(bare), formats=formats)
            if data.startswith(_JPEG):
                image.info["exif"] = _pillows_exif(data)
            return image
        raise  # the first error: the EXIF was not what failed


def without_exif(data: bytes) -> bytes | None:
    """The file with its EXIF hidden from readers (see the module); None when it has none to hide."""
    if data.startswith(_JPEG):
        found = [start for start, _ in jpeg_markers.exif_payloads(data)]
    else:
        found = list(_exif_item_types(data))
    if not found:
        return None
    bare = bytearray(data)
    for at in found:
        bare[at : at + 4] = _HIDDEN
    return bytes(bare)


def _pillows_exif(data: bytes) -> bytes:
    """A JPEG's EXIF as Pillow keeps it: the first segment's payload, and each later one's after its
    identifier."""
    first, *later = (data[start:end] for start, end in jpeg_markers.exif_payloads(data))
    return first + b"".join(payload[6:] for payload in later)


def jpeg_or_heif(head: bytes) -> bool:
    """Whether a file's first bytes are a JPEG's or a HEIF image's (an AVIF's too: both list HEIF's structural
    brand, mif1, in their `ftyp` box): the formats whose EXIF Pillow reads as it opens them."""
    return head.startswith(_JPEG) or (head[4:8] == b"ftyp" and b"mif1" in head[8 : int.from_bytes(head[:4])])


def _exif_item_types(data: bytes) -> Iterator[int]:
    """Where the item type of each Exif item entry (`infe`, versions 2 and 3) of an ISO BMFF file's (AVIF,
    HEIF) `meta` box is."""
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind != b"meta":
            continue
        for child, child_start, child_end in _boxes(data, start + 4, end):  # meta is a FullBox
            if child != b"iinf" or child_start + 4 > child_end:
                continue
            count_bytes = 2 if data[child_start] == 0 else 4
            for entry, entry_start, entry_end in _boxes(data, child_start + 4 + count_bytes, child_end):
                version = data[entry_start] if entry_start < entry_end else 0
                if entry != b"infe" or version < 2:
                    continue
                at = entry_start + 4 + (2 if version == 2 else 4) + 2  # after item_ID, item_protection_index
                if data[at : at + 4] == _EXIF and at + 4 <= entry_end:
                    yield at


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Each box between `start` and `end`: its type, where its payload starts and where it ends; stops at the
    first box whose size does not fit."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            if at + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:  # to the end of its container
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size
