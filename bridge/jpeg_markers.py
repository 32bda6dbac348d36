"""A JPEG's segments before its first scan: its frame (coding process and sample precision), the original's
metadata carried into a result, and whether its Huffman tables are the standard ones.

Huffman tables: a camera's encoder usually codes in one pass, with the standard tables (JPEG's Annex K,
libjpeg's defaults); an editor or an app may write tables optimized for the image (a second pass, 5-10 %
smaller). A spliced result is coded as its original was: with the standard tables when the original's are all
standard ones (libjpeg writes them in one pass: 45 ms less than optimizing at 12 MP here, and the result is as
large as such an original), else with optimized tables, so an optimized original does not grow.
"""

import functools
import io
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from fluxfill.bridge import stale_metadata

_SOS, _DHT, _APP0, _APP14, _APP15, _COM, _EOI, _TEM = 0xDA, 0xC4, 0xE0, 0xEE, 0xEF, 0xFE, 0xD9, 0x01
_APP1 = 0xE1
_EXIF_IDENTIFIER = b"Exif\x00\x00"
# The metadata segments libjpeg reads for itself: JFIF's (APP0) and Adobe's (APP14) say what colour space the
# components are coded in (an Adobe transform of 0: R, G and B as they are).
_READ_BY_LIBJPEG = frozenset({_APP0, _APP14})
# The next marker that is not inside a scan's data: 0xFF followed by anything but a stuffed zero, a restart
# marker or a fill byte (a 0xFF of the data itself is always followed by a zero, so this cannot match inside).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# (class: 0 DC or 1 AC, the 16 code-length counts, the symbols)
Table = tuple[int, bytes, bytes]


def _segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment of the JPEG's image, up to its EOI (a gain map or other
    image appended after it, or a thumbnail inside EXIF, is not walked), read as libjpeg reads it: a segment
    is stepped over by its length, and the next marker is searched for after each (a scan's data, or bytes
    between segments, which libjpeg and Pillow skip with a warning, and a hostile file may hold)."""
    at = 2
    while (found := _NEXT_MARKER.search(data, at)) is not None:
        at = found.start()
        marker = data[at + 1]
        if marker == _EOI:
            return
        if marker == _TEM:  # no length follows
            at += 2
            continue
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        yield marker, at, end
        at = end


def _header(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The segments before the first scan, and where that scan's segment starts (the file's end without)."""
    segments: list[tuple[int, bytes]] = []
    for marker, start, end in _segments(data):
        if marker == _SOS:
            return segments, start
        segments.append((marker, data[start:end]))
    return segments, len(data)


def header_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment bytes) of every segment between SOI and the first scan."""
    return _header(data)[0]


def exif_payloads(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of the payload ("Exif\\0\\0" on) of each EXIF APP1 segment before the first scan."""
    found = []
    for marker, start, end in _segments(data):
        if marker == _SOS:
            break
        if marker == _APP1 and data[start + 4 : start + 10] == _EXIF_IDENTIFIER:
            found.append((start + 4, end))
    return found


@dataclass(frozen=True)
class MarkerCounts:
    """How many marker segments a JPEG's image has (its scans among them), up to its EOI."""

    segments: int
    scans: int


def count_markers(data: bytes, at_most: int) -> MarkerCounts:
    """The segments and scans of the JPEG's image (walked as `_segments` does), counting no further than
    `at_most` + 1 segments, so a file of millions of empty segments costs no more than a phone's photo:
    milliseconds for a 12 MP photo, nothing decoded."""
    segments = scans = 0
    for marker, _, _ in itertools.islice(_segments(data), at_most + 1):
        segments += 1
        scans += marker == _SOS
    return MarkerCounts(segments, scans)


@dataclass(frozen=True)
class Frame:
    """A JPEG's start-of-frame: which coding process (SOF0-SOF15), how many bits a sample has, and each
    component's (horizontal, vertical) sampling factors."""

    marker: int
    precision: int
    sampling: tuple[tuple[int, int], ...] = ()

    @property
    def progressive(self) -> bool:
        return self.marker & 0x03 == 2

    @property
    def lossless(self) -> bool:
        return self.marker & 0x03 == 3

    @property
    def hierarchical(self) -> bool:
        return bool(self.marker & 0x04)


# Every SOFn marker: C0-CF except DHT (C4), JPG (C8, reserved) and DAC (CC).
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def frame(data: bytes) -> Frame | None:
    """The JPEG's first start-of-frame before its first scan; None when there is none that parses."""
    for marker, segment in header_segments(data):
        if marker in _FRAME_MARKERS and len(segment) >= 5:
            count = segment[9] if len(segment) >= 10 else 0
            factors = segment[11 : 10 + 3 * count : 3]
            sampling = tuple((factor >> 4, factor & 0x0F) for factor in factors)
            return Frame(marker, segment[4], sampling if len(sampling) == count else ())
    return None


def _is_metadata(marker: int) -> bool:
    return _APP0 <= marker <= _APP15 or marker == _COM


def with_metadata_of(original: bytes, written: bytes) -> bytes:
    """`written` with its APPn and COM segments replaced by the original's, byte for byte, except what shows
    the photo before the edit (fluxfill.bridge.stale_metadata: the EXIF thumbnail is blanked in place; MPF
    and XMP of appended data are left out).

    libjpeg writes a JFIF header of its own beside the markers jpeglib copies back; taking the original's
    segments verbatim keeps EXIF, ICC, XMP and comments exactly as the phone wrote them.
    """
    metadata = b"".join(
        stale_metadata.segment_without_thumbnail(marker, segment)
        for marker, segment in header_segments(original)
        if _is_metadata(marker) and stale_metadata.left_out_segment(marker, segment) is None
    )
    header, rest = _header(written)
    tables = b"".join(segment for marker, segment in header if not _is_metadata(marker))
    return written[:2] + metadata + tables + written[rest:]


@dataclass(frozen=True)
class CodedImage:
    """A JPEG as libjpeg needs it to read its coefficients: pieces of its bytes, to be written one after the
    other, and how many metadata segments they keep (JFIF's and Adobe's)."""

    pieces: list[memoryview]
    metadata_segments: int


def coded_image(data: bytes) -> CodedImage:
    """The JPEG without the metadata libjpeg does not read itself: its coefficients, tables and colour space
    read from these are the original's, and with_metadata_of puts every metadata segment back. jpeglib keeps
    each APPn and COM segment it reads, at most 50, and fails beyond them: an editor's XMP history or image
    resources in 64 KB pieces, or comments."""
    view = memoryview(data)
    pieces, metadata = [view[:2]], 0
    for marker, start, end in _segments(data):
        if marker == _SOS:
            pieces.append(view[start:])
            break
        if not _is_metadata(marker) or marker in _READ_BY_LIBJPEG:
            pieces.append(view[start:end])
            metadata += _is_metadata(marker)
    return CodedImage(pieces, metadata)


def left_out_of(original: bytes) -> list[str]:
    """What with_metadata_of leaves out of this original's segments, each said once (the result's note)."""
    segments = header_segments(original)
    found = (stale_metadata.left_out_segment(marker, segment) for marker, segment in segments)
    return list(dict.fromkeys(what for what in found if what is not None))


def huffman_tables(data: bytes) -> set[Table] | None:
    """The Huffman tables defined before the JPEG's first scan; None when a DHT segment does not parse."""
    tables: set[Table] = set()
    for marker, segment in header_segments(data):
        if marker != _DHT:
            continue
        body, at = segment[4:], 0
        while at < len(body):
            if at + 17 > len(body):
                return None
            counts = body[at + 1 : at + 17]
            end = at + 17 + sum(counts)
            if end > len(body):
                return None
            tables.add((body[at] >> 4, counts, body[at + 17 : end]))
            at = end
    return tables


@functools.cache
def standard_tables() -> frozenset[Table]:
    """libjpeg's standard tables, as it writes them without optimizing (read from a tiny colour JPEG)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", optimize=False)
    return frozenset(huffman_tables(buffer.getvalue()) or ())


def has_standard_tables(original: bytes) -> bool:
    """Whether every Huffman table of the original is one of the standard ones."""
    tables = huffman_tables(original)
    return bool(tables) and tables is not None and tables <= standard_tables()
