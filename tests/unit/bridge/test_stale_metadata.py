"""No result carries what shows the photo before the edit: the EXIF thumbnail, multi-picture images (HDR gain
maps), XMP of appended data; everything else of the original's metadata stays byte for byte."""

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fluxfill.bridge import jpeg_markers
from fluxfill.bridge.intake import read_photo
from fluxfill.bridge.result_image import encode_result
from fluxfill.bridge.stale_metadata import exif_upright_in_place, exif_without_thumbnail
from tests.unit.bridge.test_result_image import BIG, edit, jpeg, metadata, phone_metadata, textured

APP1 = 0xE1


def thumbnail_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def exif_with_thumbnail(order: str, turn: int = 1) -> bytes:
    """EXIF as a camera lays it out: IFD0 (Make, Orientation), then IFD1 locating a JPEG thumbnail."""
    thumbnail, make = thumbnail_jpeg(), b"PetPhone\x00"
    make_at = 8 + 2 + 12 * 2 + 4
    ifd1_at = make_at + len(make)
    thumbnail_at = ifd1_at + 2 + 12 * 2 + 4
    header = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8)
    ifd0 = (
        struct.pack(order + "H", 2)
        + struct.pack(order + "HHII", 0x010F, 2, len(make), make_at)
        + struct.pack(order + "HHIHH", 0x0112, 3, 1, turn, 0)
        + struct.pack(order + "I", ifd1_at)
    )
    ifd1 = (
        struct.pack(order + "H", 2)
        + struct.pack(order + "HHII", 0x0201, 4, 1, thumbnail_at)
        + struct.pack(order + "HHII", 0x0202, 4, 1, len(thumbnail))
        + struct.pack(order + "I", 0)
    )
    return b"Exif\x00\x00" + header + ifd0 + make + ifd1 + thumbnail


def exif_segment(data: bytes) -> bytes:
    return next(s for m, s in jpeg_markers.header_segments(data) if m == APP1 and s[4:].startswith(b"Exif"))


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("reencoded", [False, True])
def test_the_exif_thumbnail_of_the_photo_before_the_edit_is_not_in_the_result(
    order: str, reencoded: bool
) -> None:
    """Spliced: the EXIF segment is the original's, the same length, its thumbnail zeroed and unlinked;
    re-encoded whole (an RGB-coded original): the same EXIF goes into the new file."""
    exif = exif_with_thumbnail(order, turn=6)
    original = jpeg(textured(96, 64), quality=90, keep_rgb=reencoded, exif=exif)
    photo = read_photo(original, BIG)

    result = encode_result(photo, edit(photo.pixels, (8, 8, 24, 24)))

    assert result.encoding == ("reencoded" if reencoded else "dct_splice")
    assert thumbnail_jpeg() not in result.data
    carried = exif_segment(result.data)
    assert len(carried) == len(exif_segment(original))
    tags = Image.open(io.BytesIO(result.data)).getexif()
    assert (tags[0x010F], tags[0x0112]) == ("PetPhone", 6)
    assert not tags.get_ifd(1), "IFD1 is unlinked"
    if not reencoded:
        assert result.note is None, "a thumbnail is no segment left out"


def test_multi_picture_images_are_left_out_and_the_result_is_one_plain_jpeg() -> None:
    """An MPO (MPF segment, a second image after the first): an HDR gain map made of the photo before the
    edit would brighten the new pixels as the old ones; the result is the edited image alone."""
    pixels = textured(160, 120)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer,
        format="MPO",
        save_all=True,
        append_images=[Image.fromarray(pixels[::2, ::2])],
        quality=90,
        **phone_metadata(),
    )
    original = buffer.getvalue()
    assert Image.open(io.BytesIO(original)).format == "MPO"
    photo = read_photo(original, BIG)

    result = encode_result(photo, edit(photo.pixels, (20, 30, 70, 90)))

    assert result.encoding == "dct_splice"
    assert result.note is not None
    assert "multi-picture images" in result.note
    shown = Image.open(io.BytesIO(result.data))
    assert (shown.format, getattr(shown, "n_frames", 1)) == ("JPEG", 1)
    assert not any(s[4:].startswith(b"MPF\x00") for _, s in jpeg_markers.header_segments(result.data))
    kept = [segment for segment in metadata(original) if segment[4:8] != b"MPF\x00"]
    assert len(kept) == len(metadata(original)) - 1
    assert metadata(result.data) == kept, "EXIF, ICC, comment and quantization tables as they were"


def with_segments(data: bytes, *segments: tuple[int, bytes]) -> bytes:
    """`data` with APPn segments (marker, payload) inserted after its SOI."""
    inserted = b"".join(bytes([0xFF, marker]) + struct.pack(">H", len(p) + 2) + p for marker, p in segments)
    return data[:2] + inserted + data[2:]


def test_xmp_of_data_beside_the_image_is_left_out_and_other_xmp_stays() -> None:
    xmp = b"http://ns.adobe.com/xap/1.0/\x00"
    rating = xmp + b'<x:xmpmeta><rdf:Description xmp:Rating="5"/></x:xmpmeta>'
    motion = xmp + b'<x:xmpmeta><rdf:Description GCamera:MotionPhoto="1"><Container:Directory/>'
    motion += b"</rdf:Description></x:xmpmeta>"
    depth = (
        b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 32 + b"\x00\x00\x00\x10\x00\x00\x00\x00GDepth:Data"
    )
    original = with_segments(
        jpeg(textured(96, 64), quality=90), (APP1, rating), (APP1, motion), (APP1, depth)
    )
    photo = read_photo(original, BIG)

    result = encode_result(photo, edit(photo.pixels, (8, 8, 24, 24)))

    assert result.encoding == "dct_splice"
    payloads = [s[4:] for m, s in jpeg_markers.header_segments(result.data) if m == APP1]
    assert payloads == [rating]
    assert result.note is not None
    assert "extended XMP" in result.note
    assert "motion photo" in result.note


def test_an_edit_that_changes_nothing_returns_the_original_with_all_its_metadata() -> None:
    original = jpeg(textured(64, 48), quality=90, exif=exif_with_thumbnail("<"))
    photo = read_photo(original, BIG)
    result = encode_result(photo, photo.pixels.copy())
    assert (result.data, result.note) == (original, None)


@given(
    st.binary(max_size=300),
    st.sampled_from([b"", b"Exif\x00\x00"]),
    st.sampled_from([b"II*\x00", b"MM\x00*"]),
)
@settings(max_examples=500, deadline=None)
def test_any_exif_keeps_its_length_and_never_raises(body: bytes, prefix: bytes, order: bytes) -> None:
    for exif in (body, prefix + order + body, prefix + body):
        assert len(exif_without_thumbnail(exif)) == len(exif)


@pytest.mark.parametrize("cut", range(0, 120, 3))
def test_a_cut_short_exif_is_returned_as_it_is_or_without_its_thumbnail(cut: int) -> None:
    whole = exif_with_thumbnail("<")
    exif = whole[: len(whole) - cut] if cut else whole
    cleaned = exif_without_thumbnail(exif)
    assert len(cleaned) == len(exif)
    assert cleaned == exif or thumbnail_jpeg()[:8] not in cleaned


@pytest.mark.parametrize("kind", ["PNG", "WEBP", "HEIF"])
def test_results_written_upright_carry_no_thumbnail_either(kind: str) -> None:
    """Their EXIF is written again without its orientation (Pillow writes IFD0 and its sub-directories, not
    IFD1): the thumbnail does not travel there."""
    buffer = io.BytesIO()
    Image.fromarray(textured(48, 32)).save(buffer, format=kind, exif=exif_with_thumbnail("<", turn=6))
    photo = read_photo(buffer.getvalue(), BIG)

    result = encode_result(photo, edit(photo.pixels, (4, 4, 20, 20)))

    assert thumbnail_jpeg() not in result.data
    tags = Image.open(io.BytesIO(result.data)).getexif()
    assert tags[0x010F] == "PetPhone"
    assert 0x0112 not in tags


@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_turned_upright_in_place_changes_the_orientation_and_the_thumbnail_alone(order: str) -> None:
    """The way EXIF Pillow cannot write again is carried by an upright result."""
    exif = exif_with_thumbnail(order, turn=6)
    upright = exif_upright_in_place(exif)
    assert upright is not None
    assert upright == exif_without_thumbnail(exif_with_thumbnail(order, turn=1))
    tags = Image.Exif()
    tags.load(upright)
    assert (tags[0x0112], tags[0x010F]) == (1, "PetPhone")


def test_exif_without_an_orientation_is_kept_as_it_is_but_for_its_thumbnail() -> None:
    exif = exif_with_thumbnail("<")
    entry = exif.index(struct.pack("<HH", 0x0112, 3))
    no_turn = exif[:entry] + struct.pack("<H", 0x0131) + exif[entry + 2 :]  # Software in its place
    assert exif_upright_in_place(no_turn) == exif_without_thumbnail(no_turn)


@pytest.mark.parametrize(
    "change",
    [
        lambda exif: exif[:8],  # IFD0 cut off
        lambda exif: exif[:4] + struct.pack("<I", 4_000) + exif[8:],  # IFD0 beyond the end
        lambda exif: exif.replace(struct.pack("<HHI", 0x0112, 3, 1), struct.pack("<HHI", 0x0112, 5, 1)),
        lambda exif: exif.replace(struct.pack("<HHI", 0x0112, 3, 1), struct.pack("<HHI", 0x0112, 3, 2)),
        lambda exif: b"Exif\x00\x00MM\x00",
    ],
    ids=["cut", "beyond", "rational", "two", "not-tiff"],
)
def test_exif_whose_orientation_cannot_be_set_in_place_is_none(change: object) -> None:
    assert exif_upright_in_place(change(exif_with_thumbnail("<", turn=6))) is None  # type: ignore[operator]
