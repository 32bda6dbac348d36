"""A photo whose EXIF breaks Pillow's reader (an AVIF's it cannot write again, a JPEG's resolution it cannot
read) opens without it; nothing else is changed, and a photo that opens is opened as Pillow opens it."""

import io
import struct
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

from fluxfill.bridge import file_head
from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.bridge.exif_fallback import jpeg_or_heif, open_image, without_exif
from fluxfill.bridge.intake import read_photo
from tests.unit.bridge.test_intake import (
    avif_turned_with_exif_pillow_cannot_write,
    encode,
    exif_of,
    exif_with_a_one_byte_resolution,
)


def test_only_the_avifs_exif_item_type_is_renamed() -> None:
    data = avif_turned_with_exif_pillow_cannot_write()
    bare = without_exif(data)
    assert bare is not None
    at = data.index(b"Exif")
    assert bare[at : at + 4] == b"void"
    assert bare[:at] + bare[at + 4 :] == data[:at] + data[at + 4 :]
    with Image.open(io.BytesIO(bare)) as image:  # turned by its boxes, with no EXIF but that turn
        assert image.getexif().get(0x0112) == 6
        assert 0x0110 not in image.getexif()


def test_an_avif_that_opens_is_opened_as_pillow_opens_it() -> None:
    data = encode(Image.new("RGB", (40, 24)), "AVIF", exif=exif_of(6))
    with open_image(data) as image:
        assert image.info["exif"] == Image.open(io.BytesIO(data)).info["exif"]


def jpeg_with_two_exif_segments() -> bytes:
    """A JPEG whose EXIF breaks Pillow's reader, continued in a second APP1 segment (as Pillow reads them:
    the second's payload after its identifier is appended to the first's)."""
    data = encode(Image.new("RGB", (40, 24)), "JPEG", exif=exif_with_a_one_byte_resolution(6))
    second = b"Exif\x00\x00" + b"more"
    at = data.index(b"\xff\xdb")  # before the quantization tables
    return data[:at] + b"\xff\xe1" + struct.pack(">H", 2 + len(second)) + second + data[at:]


def test_a_jpegs_exif_identifiers_are_renamed_and_its_exif_given_back_as_pillow_keeps_it() -> None:
    data = jpeg_with_two_exif_segments()
    bare = without_exif(data)
    assert bare is not None
    assert bare.count(b"void\x00\x00") == 2
    assert bare.replace(b"void\x00\x00", b"Exif\x00\x00") == data
    with open_image(data) as image:
        assert image.info["exif"] == exif_with_a_one_byte_resolution(6) + b"more"
        assert image.size == (40, 24)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        encode(Image.new("RGB", (8, 8)), "JPEG"),  # no EXIF segment
        encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif_of(6))[:26],  # cut in its identifier
        encode(Image.new("RGB", (8, 8)), "PNG", exif=exif_of(6)),
        encode(Image.new("RGB", (8, 8)), "AVIF"),  # no EXIF item
        avif_turned_with_exif_pillow_cannot_write()[:60],  # cut inside its meta box
        struct.pack(">I4s", 1, b"meta") + struct.pack(">Q", 1 << 40),  # a 64-bit size beyond the end
        struct.pack(">I4s", 0xFFFFFFFF, b"meta") + b"Exif" * 8,
        struct.pack(">I4s", 4, b"meta") + b"Exif" * 8,  # a size smaller than its header
    ],
    ids=["empty", "jpeg", "jpeg-cut", "png", "avif-no-exif", "cut", "largesize", "oversized", "undersized"],
)
def test_files_without_exif_to_hide_are_left_alone(data: bytes) -> None:
    assert without_exif(data) is None


def test_a_broken_avif_with_such_exif_is_a_corrupt_image() -> None:
    data = bytearray(avif_turned_with_exif_pillow_cannot_write())
    mdat = data.index(b"mdat")
    data[mdat + 4 :] = bytes(len(data) - mdat - 4)  # the coded picture gone, the EXIF item still there
    with pytest.raises(PermanentJobError) as refused:
        read_photo(bytes(data), 1_000_000)
    assert refused.value.code == ErrorCode.CORRUPT_IMAGE


def test_a_file_that_fails_without_its_exif_too_raises_the_first_error() -> None:
    data = bytearray(avif_turned_with_exif_pillow_cannot_write())
    data[8:12] = b"none"  # no AVIF brand: Pillow's AVIF reader takes it for no AVIF
    with pytest.raises(UnidentifiedImageError):
        open_image(bytes(data), formats=["AVIF"])


def test_a_path_is_opened_as_the_bytes_are(tmp_path: Path) -> None:
    path = tmp_path / "photo.avif"
    path.write_bytes(avif_turned_with_exif_pillow_cannot_write(40, 24))
    with open_image(path) as image:
        assert image.size == (40, 24)
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "missing.avif")


def test_a_file_of_another_kind_is_not_read_again(tmp_path: Path) -> None:
    """A video picked by mistake (an ISO file without HEIF's brand) fails as Pillow fails it, unread."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"isom", 512, b"isom", b"mp41") + bytes(4096))
    photo = tmp_path / "photo.avif"
    photo.write_bytes(avif_turned_with_exif_pillow_cannot_write())
    assert file_head.bytes_if(video, jpeg_or_heif) == b""
    assert file_head.bytes_if(photo, jpeg_or_heif) == photo.read_bytes()
    with pytest.raises(UnidentifiedImageError):
        open_image(video)
