"""Metadata that shows the photo as it was before the edit, which no result may carry.

A phone's photo carries smaller or partial copies of itself beside its pixels: EXIF's embedded thumbnail
(IFD1, about 160x120, in nearly every camera JPEG), the multi-picture images an MPF segment indexes (an
iPhone's or an Android Ultra HDR photo's HDR gain map, a large thumbnail), and XMP that describes data
appended to the file or kept in extended XMP (a motion photo's video, a gain map, a portrait's depth map and
unblurred image). Copied into the result they would show the unedited pet wherever a viewer reads them (a file
browser's thumbnail, an HDR display, a gallery's motion or depth editor), or point at appended data the
result no longer has (only the primary image is written). So: the EXIF thumbnail is blanked and unlinked in
place (every other EXIF byte and offset as it was), and the MPF and such XMP segments are left out, and the
result's note says which.
"""

from collections.abc import Callable
from typing import Literal

from PIL import Image

from fluxfill.bridge import orientation

# EXIF travels in one APP1 segment of a JPEG (Pillow refuses more); a HEIC's may be larger.
JPEG_MAX_EXIF_BYTES = 65_533
_EXIF_HEADER = b"Exif\x00\x00"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_EXTENDED_XMP_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
_MPF_HEADER = b"MPF\x00"
_APP1, _APP2 = 0xE1, 0xE2
# XMP of data outside the primary image: Google's container directory (motion photos, Ultra HDR), the gain
# map's own schema (Adobe/Google hdrgm, Apple's HDRGainMap), motion photo and depth schemas, and the pointer
# to extended XMP.
_XMP_OF_APPENDED_DATA = (
    b"GContainer",
    b"Container:Directory",
    b"hdrgm:",
    b"HDRGainMap",
    b"MicroVideo",
    b"MotionPhoto",
    b"GDepth:",
    b"GImage:",
    b"HasExtendedXMP",
)
# IFD1's tags that locate its thumbnail: JPEGInterchangeFormat(Length), or an uncompressed one's strips.
_JPEG_OFFSET, _JPEG_LENGTH = 0x0201, 0x0202
_STRIP_OFFSETS, _STRIP_BYTE_COUNTS = 0x0111, 0x0117
_SHORT_OR_LONG = {3: 2, 4: 4}  # TIFF field types of those tags, and their sizes
_MAX_STRIPS = 4096  # a hostile count cannot make the walk long
_BYTE_ORDERS: dict[bytes, Literal["little", "big"]] = {b"II": "little", b"MM": "big"}


def carried_exif(
    exif: bytes | None, *, upright: bool, max_bytes: int | None = None
) -> tuple[bytes | None, str | None]:
    """The EXIF a picture made of the photo carries (without its orientation when the pixels are upright; at
    most `max_bytes`), and why, when the photo's is left out (for a result's note): metadata is kept where it
    can be, and its faults never fail a job whose pixels are good."""
    if not exif:
        return exif, None
    if not upright:
        exif = exif_without_thumbnail(exif)
    else:  # written again from its tags: IFD0 and its sub-directories, without IFD1 (the thumbnail)
        try:
            tags = Image.Exif()
            tags.load(exif)
            tags.pop(orientation.ORIENTATION_TAG, None)
            exif = tags.tobytes()
        # Pillow reads EXIF it cannot write again: a tag of another type than the standard's (a Model stored
        # as a rational) raised AttributeError, not one of EXIF_ERRORS, and the job failed five times as an
        # unexpected error. Whatever writing it fails on, the bytes are kept, turned upright in place.
        except Exception as error:
            exif = exif_upright_in_place(exif)
            if exif is None:
                return None, f"it cannot be read ({error or type(error).__name__})"
    if max_bytes is not None and len(exif) > max_bytes:
        return None, f"{len(exif)} bytes, more than a JPEG segment holds"
    return exif, None


def left_out_segment(marker: int, segment: bytes) -> str | None:
    """What a JPEG header segment (marker and whole segment bytes) holds of the photo before the edit, for
    the result's note; None when it may be carried."""
    payload = segment[4:]
    if marker == _APP2 and payload.startswith(_MPF_HEADER):
        return "multi-picture images (an HDR gain map or a large thumbnail)"
    if marker == _APP1 and payload.startswith(_EXTENDED_XMP_HEADER):
        return "extended XMP (a depth map or an image of the photo before the edit)"
    is_xmp = marker == _APP1 and payload.startswith(_XMP_HEADER)
    if is_xmp and any(name in payload for name in _XMP_OF_APPENDED_DATA):  # only XMP is searched
        return "XMP describing data beside the image (a gain map, a motion photo's video, depth)"
    return None


def segment_without_thumbnail(marker: int, segment: bytes) -> bytes:
    """An EXIF APP1 segment with its thumbnail blanked and unlinked (exif_without_thumbnail); any other
    segment as it is."""
    if marker != _APP1 or not segment[4:].startswith(_EXIF_HEADER):
        return segment
    return segment[:4] + exif_without_thumbnail(segment[4:])


def exif_without_thumbnail(exif: bytes) -> bytes:
    """EXIF (TIFF bytes, or with the "Exif\\0\\0" header a JPEG's APP1 has) with IFD1, the thumbnail's
    directory, unlinked from IFD0 and the thumbnail's bytes set to zero: the same length, every other byte
    and offset as it was. EXIF that does not parse that far is returned as it is (no viewer reads its
    thumbnail either)."""
    parsed = _tiff_of(exif)
    if parsed is None:
        return exif
    start, tiff, number = parsed
    try:
        ifd0 = number(4, 4)
        next_at = ifd0 + 2 + 12 * number(ifd0, 2)
        ifd1 = number(next_at, 4)
        if ifd1 == 0:
            return exif
        for offset, length in _thumbnail_spans(ifd1, number):
            tiff[offset : offset + length] = bytes(min(length, max(0, len(tiff) - offset)))
        tiff[next_at : next_at + 4] = bytes(4)
    except IndexError:
        return exif
    return exif[:start] + bytes(tiff)


def exif_upright_in_place(exif: bytes) -> bytes | None:
    """EXIF without its thumbnail (exif_without_thumbnail) and with IFD0's Orientation, when it has one, set
    to 1 in place: every other byte as it was. None when IFD0 does not parse, or its Orientation is no single
    SHORT or LONG."""
    exif = exif_without_thumbnail(exif)
    parsed = _tiff_of(exif)
    if parsed is None:
        return None
    start, tiff, number = parsed
    try:
        ifd0 = number(4, 4)
        for index in range(number(ifd0, 2)):
            entry = ifd0 + 2 + 12 * index
            if number(entry, 2) != orientation.ORIENTATION_TAG:
                continue
            kind, count = number(entry + 2, 2), number(entry + 4, 4)
            if kind not in _SHORT_OR_LONG or count != 1:
                return None
            size = _SHORT_OR_LONG[kind]
            tiff[entry + 8 : entry + 8 + size] = (1).to_bytes(size, _BYTE_ORDERS[bytes(tiff[:2])])
    except IndexError:
        return None
    return exif[:start] + bytes(tiff)


def _tiff_of(exif: bytes) -> tuple[int, bytearray, Callable[[int, int], int]] | None:
    """Where the EXIF's TIFF bytes start, a copy of them to change, and `read(at, size)`: the unsigned number
    of `size` bytes at `at` in their byte order (IndexError outside them); None without a TIFF header."""
    start = len(_EXIF_HEADER) if exif.startswith(_EXIF_HEADER) else 0
    tiff = bytearray(exif[start:])
    order = _BYTE_ORDERS.get(bytes(tiff[:2]))
    if order is None or len(tiff) < 8:
        return None

    def number(at: int, size: int) -> int:
        if at < 0 or at + size > len(tiff):
            raise IndexError(at)
        return int.from_bytes(tiff[at : at + size], order)

    return start, tiff, number


def _thumbnail_spans(ifd1: int, read: Callable[[int, int], int]) -> list[tuple[int, int]]:
    """(offset, length) of each part of the thumbnail IFD1 locates; `read(at, size)` raises IndexError
    outside the TIFF bytes."""
    values: dict[int, list[int]] = {}
    for index in range(read(ifd1, 2)):
        entry = ifd1 + 2 + 12 * index
        tag, kind, count = read(entry, 2), read(entry + 2, 2), read(entry + 4, 4)
        if tag not in (_JPEG_OFFSET, _JPEG_LENGTH, _STRIP_OFFSETS, _STRIP_BYTE_COUNTS) or kind not in (3, 4):
            continue
        size = _SHORT_OR_LONG[kind]
        at = entry + 8 if size * count <= 4 else read(entry + 8, 4)
        values[tag] = [read(at + size * i, size) for i in range(min(count, _MAX_STRIPS))]
    spans = list(zip(values.get(_JPEG_OFFSET, []), values.get(_JPEG_LENGTH, []), strict=False))
    spans += list(zip(values.get(_STRIP_OFFSETS, []), values.get(_STRIP_BYTE_COUNTS, []), strict=False))
    return spans
