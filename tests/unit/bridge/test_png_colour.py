"""A PNG's colour chunks, read as decoders read them: before the pixel data, of the sizes they must have."""

import io
import struct
import zlib

import pytest
from PIL import Image, ImageCms, PngImagePlugin

from fluxfill.bridge.png_colour import MAX_CHUNKS_BEFORE_PIXELS, colour_chunks, gamma_profile

SRGB = ImageCms.createProfile("sRGB")

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


def in_srgb(profile: bytes, colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """What a colour of the space `profile` describes is in sRGB (LittleCMS, relative colorimetric)."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    transform = ImageCms.buildTransform(
        source, SRGB, "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC
    )
    converted = ImageCms.applyTransform(Image.new("RGB", (1, 1), colour), transform)
    assert converted is not None
    red, green, blue = converted.getpixel((0, 0))  # type: ignore[misc]
    return int(red), int(green), int(blue)


def srgb_encoded(linear: float) -> int:
    encoded = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return round(255 * encoded)


def gama(gamma: float) -> tuple[bytes, bytes]:
    return b"gAMA", struct.pack(">I", round(100_000 / gamma))


def chrm(white: tuple[int, int], *primaries: tuple[int, int]) -> tuple[bytes, bytes]:
    return b"cHRM", struct.pack(">8I", *white, *(value for xy in primaries for value in xy))


D65 = (31270, 32900)
BT709_CHRM = chrm(D65, (64000, 33000), (30000, 60000), (15000, 6000))
P3_CHRM = chrm(D65, (68000, 32000), (26500, 69000), (15000, 6000))


@pytest.mark.parametrize("gamma", [1.0, 1.8, 2.6])
def test_a_pngs_gamma_becomes_a_preview_profile_that_shows_its_greys_as_browsers_show_the_png(
    gamma: float,
) -> None:
    """A linear export (gAMA 1.0), an old Mac's 1.8: browsers apply the gamma to the PNG, and a JPEG preview
    without a profile is shown as sRGB, so it was much darker or lighter than the result."""
    profile = gamma_profile((gama(gamma),))
    assert profile is not None
    for grey in (32, 128, 200):
        expected = srgb_encoded((grey / 255) ** gamma)
        assert all(abs(value - expected) <= 1 for value in in_srgb(profile, (grey, grey, grey)))


def test_a_pngs_primaries_are_in_its_preview_profile() -> None:
    colour = (180, 120, 100)
    wide, plain, unsaid = (gamma_profile((gama(1.8), *said)) for said in ((P3_CHRM,), (BT709_CHRM,), ()))
    assert wide is not None
    assert plain is not None
    assert unsaid is not None
    assert max(abs(a - b) for a, b in zip(in_srgb(plain, colour), in_srgb(unsaid, colour), strict=True)) <= 1
    # Display P3's red is redder than sRGB's: the same values are a more saturated colour.
    red, green, _ = in_srgb(wide, colour)
    assert red > in_srgb(unsaid, colour)[0] + 5
    assert green < in_srgb(unsaid, colour)[1]


@pytest.mark.parametrize(
    "chunks",
    [
        (),
        ((b"sRGB", b"\x00"), gama(1.0)),  # sRGB decides, and every JPEG is read as sRGB
        ((b"cICP", bytes([9, 16, 0, 1])), gama(1.0)),  # HDR: no ICC curve here says it
        (gama(2.2),),  # sRGB near enough
        ((b"gAMA", struct.pack(">I", 0)),),  # ignored by libpng, so by browsers
        ((b"gAMA", struct.pack(">I", 15)),),
        ((b"gAMA", struct.pack(">I", 625_001)),),
    ],
    ids=["none", "srgb", "cicp", "gamma-2.2", "gamma-0", "too-large", "too-small"],
)
def test_no_preview_profile_where_the_chunks_do_not_decide_or_say_srgb(
    chunks: tuple[tuple[bytes, bytes], ...],
) -> None:
    assert gamma_profile(chunks) is None


def test_primaries_no_decoder_takes_are_left_for_srgbs() -> None:
    unsaid = gamma_profile((gama(1.0),))
    zero_y = chrm(D65, (64000, 0), (30000, 60000), (15000, 6000))
    flat = chrm(D65, (30000, 30000), (30000, 30000), (30000, 30000))  # no colour space at all
    assert gamma_profile((gama(1.0), zero_y)) == unsaid
    assert gamma_profile((gama(1.0), flat)) == unsaid


def test_a_linear_pngs_job_gives_a_preview_with_its_gamma_and_a_result_with_its_chunk() -> None:
    from tests.unit.bridge.world import PREFIX, World, photo

    world = World()
    info = PngImagePlugin.PngInfo()
    info.add(*gama(1.0))
    buffer = io.BytesIO()
    Image.fromarray(photo()).save(buffer, format="PNG", pnginfo=info)
    world.objects.objects[f"{PREFIX}/original.png"] = buffer.getvalue()
    assert world.deliver().kind == "done"
    preview = Image.open(io.BytesIO(world.objects.objects[f"{PREFIX}/preview.jpg"]))
    assert preview.info["icc_profile"] == gamma_profile((gama(1.0),))
    edited = world.objects.objects[f"{PREFIX}/edited.png"]
    assert colour_chunks(edited) == (gama(1.0),)
