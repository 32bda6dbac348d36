"""Open an AVIF whose EXIF Pillow cannot write again: without its EXIF, rather than not at all.

Pillow's AVIF reader writes a photo's EXIF anew as it opens it when the EXIF Orientation differs from the
turn the file's irot and imir boxes give (HEIF's rule: the boxes win, and the EXIF is made to say so).
Pillow reads EXIF it cannot write: a tag of another type than the standard's (a Model stored as a rational,
as some editors write it) made the open raise AttributeError, TypeError or ValueError, so a good photo was
refused as corrupt or failed as an unexpected error, five times, then dead-lettered. Such a file is opened
again with its Exif items renamed in its `meta` box: libavif skips an item of a kind it does not know, and
the photo opens turned as its boxes say, without the EXIF that could not be carried anyway.
"""

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

_EXIF_ITEM = b"Exif"
_SKIPPED_ITEM = b"void"  # no item type of ISO/IEC 23008-12: skipped like any unknown one


def open_image(source: bytes | str | os.PathLike[str], formats: list[str] | None = None) -> Image.Image:
    """`Image.open(source)`, and for an AVIF that fails to open with its EXIF, the same file without it; the
    first error when that fails too, or when the file holds no EXIF item (any other format)."""
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return Image.open(opened, formats=formats)
    except Exception:
        data = source if isinstance(source, bytes) else _read_or_nothing(Path(source))
        bare = without_exif(data)
        if bare is None:
            raise
        with contextlib.suppress(Exception):
            return Image.open(io.BytesIO(bare), formats=formats)
        raise  # the first error: the EXIF was not what failed


def without_exif(data: bytes) -> bytes | None:
    """The ISO BMFF file (AVIF, HEIF) with each item of type Exif in its `meta` box renamed; None when it has
    none, or is no such file."""
    found = list(_exif_item_types(data))
    if not found:
        return None
    bare = bytearray(data)
    for at in found:
        bare[at : at + 4] = _SKIPPED_ITEM
    return bytes(bare)


def _read_or_nothing(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _exif_item_types(data: bytes) -> Iterator[int]:
    """Where the item type of each Exif item entry (`infe`, versions 2 and 3) of the file's `meta` box is."""
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
                if data[at : at + 4] == _EXIF_ITEM and at + 4 <= entry_end:
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
