"""A PNG that libpng and the browsers show past ancillary chunks they skip is read, its pixels as they are."""

import io
import struct
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.bridge.intake import check_header, decode_mask, read_photo
from fluxfill.bridge.png_repair import without_skipped_chunks

BIG = 10_000_000
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    checksum = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", checksum)


def chunks_of(data: bytes) -> list[tuple[bytes, bytes]]:
    found, at = [], len(SIGNATURE)
    while at < len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        found.append((kind, data[at + 8 : at + 8 + length]))
        at += 12 + length
    return found


def png(mode: str = "RGB", **options: object) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(5).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue(), np.asarray(image.convert("RGB"))


def with_chunks(data: bytes, *extra: bytes, after: bytes = b"IHDR") -> bytes:
    """`data` with `extra` chunks right after its first chunk of type `after`."""
    at = len(SIGNATURE)
    while True:
        length, kind = struct.unpack_from(">I4s", data, at)
        at += 12 + length
        if kind == after:
            return data[:at] + b"".join(extra) + data[at:]


def acTL(frames: int) -> bytes:  # noqa: N802 - the chunk's name
    return chunk(b"acTL", struct.pack(">II", frames, 0))


def fcTL(sequence: int) -> bytes:  # noqa: N802 - the chunk's name
    return chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, 40, 24, 0, 0, 1, 10, 0, 0))


def inflating(kind: bytes, head: bytes, size: int, count: int = 1) -> Callable[[bytes], bytes]:
    """A chunk (`count` of them) whose zlib data after `head` inflates to `size` zero bytes: a few KB each."""
    body = head + zlib.compress(bytes(size), 9)
    return lambda data: with_chunks(data, *[chunk(kind, body)] * count)


# Past Pillow's bound on one inflated chunk (raised to a profile's largest by fluxfill.bridge.photo_colours),
# and on text in all: libpng skips a text chunk or profile it will not hold (8 MB by default), browsers skip
# text; Pillow refused the file ("Decompressed data too large", "Too much memory used in text chunks").
PAST_ONE = PngImagePlugin.MAX_TEXT_CHUNK + 1
IN_ALL = PngImagePlugin.MAX_TEXT_MEMORY // 5 + 1

BROKEN = {
    "pHYs of 8 bytes": lambda data: with_chunks(data, chunk(b"pHYs", bytes(8))),
    "cHRM of 31 bytes": lambda data: with_chunks(data, chunk(b"cHRM", bytes(31))),
    "gAMA of 3 bytes": lambda data: with_chunks(data, chunk(b"gAMA", bytes(3))),
    "sRGB of no byte": lambda data: with_chunks(data, chunk(b"sRGB", b"")),
    "tRNS of 4 bytes in RGB": lambda data: with_chunks(data, chunk(b"tRNS", bytes(4))),
    "iCCP compressed by method 1": lambda data: with_chunks(data, chunk(b"iCCP", b"icc\x00\x01" + bytes(20))),
    "zTXt compressed by method 5": lambda data: with_chunks(data, chunk(b"zTXt", b"Comment\x00\x05abc")),
    "tEXt of a wrong checksum": lambda data: with_chunks(data, chunk(b"tEXt", b"Comment\x00hi", crc=1)),
    "acTL of 7 bytes": lambda data: with_chunks(data, chunk(b"acTL", bytes(7))),
    "frames out of sequence": lambda data: with_chunks(data, acTL(1), fcTL(3)),
    "zTXt past Pillow's bound": inflating(b"zTXt", b"Comment\x00\x00", PAST_ONE),
    "compressed iTXt past the bound": inflating(b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00", PAST_ONE),
    "iCCP past the bound": inflating(b"iCCP", b"icc\x00\x00", PAST_ONE),
    "text past Pillow's bound in all": inflating(b"zTXt", b"Comment\x00\x00", IN_ALL, count=5),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_png_with_an_ancillary_chunk_libpng_skips_is_read_as_browsers_show_it(name: str) -> None:
    original, pixels = png()
    data = BROKEN[name](original)
    with pytest.raises((SyntaxError, ValueError, OSError)):  # Pillow alone refuses the file
        Image.open(io.BytesIO(data)).load()

    photo = read_photo(data, BIG)

    assert np.array_equal(photo.pixels, pixels)
    assert decode_mask(data, BIG).shape == (24, 40)
    check_header(data, "original photo", BIG)


def test_an_empty_profile_after_the_pixel_data_is_skipped_not_an_unexpected_error() -> None:
    """Pillow reads the chunks after the pixel data as it decodes, and an empty iCCP there raised IndexError:
    the job an unexpected error, tried five times and dead-lettered (found by the property test below)."""
    original, pixels = png()
    data = with_chunks(original, chunk(b"iCCP", b""), after=b"IDAT")
    with pytest.raises(IndexError):
        Image.open(io.BytesIO(data)).load()
    assert np.array_equal(read_photo(data, BIG).pixels, pixels)


def test_only_the_skipped_chunks_and_the_animation_are_left_out() -> None:
    original, _ = png("P", transparency=0)
    data = with_chunks(original, chunk(b"pHYs", bytes(8)), acTL(1), fcTL(0), chunk(b"tEXt", b"Comment\x00ok"))
    repaired = without_skipped_chunks(data)
    assert repaired is not None
    assert chunks_of(repaired) == [c for c in chunks_of(data) if c[0] not in {b"pHYs", b"acTL", b"fcTL"}]


def test_text_within_pillows_bounds_is_kept_with_the_skipped_chunks_left_out() -> None:
    """Stored text past the bound on one inflated chunk is no refusal of Pillow's, nor a compressed one up
    to it: both kept when the repair runs for another chunk."""
    original, pixels = png()
    kept = [
        chunk(b"tEXt", b"Comment\x00" + b"x" * PAST_ONE),
        chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(PAST_ONE - 1))),
    ]
    data = with_chunks(original, chunk(b"pHYs", bytes(8)), *kept)
    repaired = without_skipped_chunks(data)
    assert repaired is not None
    assert chunks_of(repaired) == [c for c in chunks_of(data) if c[0] != b"pHYs"]
    assert np.array_equal(read_photo(data, BIG).pixels, pixels)


@pytest.mark.parametrize(
    "data",
    [
        png()[0],
        png("P", transparency=0)[0],
        b"",
        b"\xff\xd8\xff\xe0" + bytes(20),
        with_chunks(png()[0], chunk(b"pHYs", bytes(8)))[:-12],  # no IEND: cut short
    ],
    ids=["good", "good-palette", "empty", "jpeg", "cut"],
)
def test_a_png_without_chunks_to_skip_or_that_does_not_walk_is_left_alone(data: bytes) -> None:
    assert without_skipped_chunks(data) is None


def test_broken_pixels_are_still_refused_with_the_first_refusal() -> None:
    original, _ = png()
    kinds = chunks_of(original)
    idat = original.index(b"IDAT")
    body = dict(kinds)[b"IDAT"]
    broken = original[: idat + 4] + bytes(len(body)) + original[idat + 4 + len(body) :]  # zeroed data
    broken_crc = zlib.crc32(b"IDAT" + bytes(len(body))).to_bytes(4, "big")
    broken = broken[: idat + 4 + len(body)] + broken_crc + broken[idat + 8 + len(body) :]
    data = with_chunks(broken, chunk(b"pHYs", bytes(8)))
    with pytest.raises(PermanentJobError) as refused:
        read_photo(data, BIG)
    assert refused.value.code is ErrorCode.CORRUPT_IMAGE
    assert "pHYs" in str(refused.value), "the first refusal: the file as uploaded"


# Ancillary chunks that leave the decoded pixels as they are (tRNS and eXIf change them, by design).
ANCILLARY = [b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"iCCP", b"zTXt", b"tEXt", b"iTXt", b"sBIT", b"bKGD",
             b"hIST", b"tIME", b"sPLT", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCv", b"cLLi",
             b"prVt"]  # fmt: skip
Chunk = tuple[bytes, bytes, bool, bool]  # type, data, checksum right, before the pixel data


@given(
    st.lists(
        st.tuples(st.sampled_from(ANCILLARY), st.binary(max_size=40), st.booleans(), st.booleans()),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=150, deadline=None)
def test_a_png_with_any_ancillary_chunks_decodes_to_its_pixels(chunks: list[Chunk]) -> None:
    """Whatever metadata chunks a PNG holds, before or after its pixel data, with a right checksum or not."""
    original, pixels = png()
    data = original
    for kind, body, checksum_right, before_pixels in chunks:
        extra = chunk(kind, body, crc=None if checksum_right else zlib.crc32(body))
        data = with_chunks(data, extra, after=b"IHDR" if before_pixels else b"IDAT")
    with warnings.catch_warnings():
        # Pillow warns of an animation it takes its default image of, as the bridge does (a warning there).
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL.PngImagePlugin")
        assert np.array_equal(read_photo(data, BIG).pixels, pixels)
