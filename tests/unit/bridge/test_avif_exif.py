"""An AVIF whose EXIF Pillow cannot write again opens without it; nothing else is changed or opened twice."""

import io
import struct
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

from fluxfill.bridge.avif_exif import open_image, without_exif
from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.bridge.intake import read_photo
from tests.unit.bridge.test_intake import avif_turned_with_exif_pillow_cannot_write, encode, exif_of


def test_only_the_exif_items_type_is_renamed() -> None:
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


@pytest.mark.parametrize(
    "data",
    [
        b"",
        encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif_of(6)),
        encode(Image.new("RGB", (8, 8)), "PNG", exif=exif_of(6)),
        encode(Image.new("RGB", (8, 8)), "AVIF"),  # no EXIF item
        avif_turned_with_exif_pillow_cannot_write()[:60],  # cut inside its meta box
        struct.pack(">I4s", 1, b"meta") + struct.pack(">Q", 1 << 40),  # a 64-bit size beyond the end
        struct.pack(">I4s", 0xFFFFFFFF, b"meta") + b"Exif" * 8,
        struct.pack(">I4s", 4, b"meta") + b"Exif" * 8,  # a size smaller than its header
    ],
    ids=["empty", "jpeg", "png", "avif-no-exif", "cut", "largesize", "oversized", "undersized"],
)
def test_files_without_an_exif_item_are_left_alone(data: bytes) -> None:
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
