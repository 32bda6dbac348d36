"""A PNG's colour chunks, read as decoders read them: before the pixel data, of the sizes they must have."""

import struct
import zlib

from fluxfill.bridge.png_colour import MAX_CHUNKS_BEFORE_PIXELS, colour_chunks

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GAMMA = struct.pack(">I", 55_556)  # an old Mac's 1.8


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(*chunks: bytes) -> bytes:
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    return SIGNATURE + header + b"".join(chunks) + chunk(b"IEND", b"")


def test_the_colour_chunks_before_the_pixel_data_are_read_in_order_the_first_of_each() -> None:
    data = png(
        chunk(b"tEXt", b"Software\x00a tool"),
        chunk(b"gAMA", GAMMA),
        chunk(b"sRGB", b"\x00"),
        chunk(b"gAMA", struct.pack(">I", 100_000)),  # a second: decoders take the first
        chunk(b"IDAT", b""),
        chunk(b"cICP", bytes([9, 16, 0, 1])),  # after the pixel data: no decoder reads it
    )
    assert colour_chunks(data) == ((b"gAMA", GAMMA), (b"sRGB", b"\x00"))


def test_a_colour_chunk_of_the_wrong_size_is_skipped_as_decoders_skip_it() -> None:
    data = png(chunk(b"gAMA", b"\x00\x01"), chunk(b"cHRM", bytes(32)), chunk(b"IDAT", b""))
    assert colour_chunks(data) == ((b"cHRM", bytes(32)),)


def test_no_png_a_cut_file_and_endless_chunks_read_as_far_as_they_go() -> None:
    assert colour_chunks(b"\xff\xd8\xff\xe0 a JPEG") == ()
    cut = png(chunk(b"gAMA", GAMMA), chunk(b"cHRM", bytes(32)))[:-30]
    assert colour_chunks(cut) == ((b"gAMA", GAMMA),)
    endless = png(*[chunk(b"tEXt", b"k\x00v")] * MAX_CHUNKS_BEFORE_PIXELS, chunk(b"gAMA", GAMMA))
    assert colour_chunks(endless) == (), "not read past the bound"
