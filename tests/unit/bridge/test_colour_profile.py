"""A HEIC or AVIF whose colours only its nclx box describes gets the ICC profile that box means."""

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from fluxfill.bridge.colour_profile import (
    KNOWN_PRIMARIES,
    ColourDescription,
    Primaries,
    display_profile,
    nclx_in,
    profile_for,
)
from fluxfill.bridge.intake import encode_preview, read_photo
from fluxfill.bridge.result_image import encode_result

BIG = 50_000_000
SRGB = ImageCms.createProfile("sRGB")


def srgb_colour_in(profile: bytes, colour: tuple[int, int, int]) -> tuple[int, ...]:
    """An sRGB colour's values in the space `profile` describes (LittleCMS, relative colorimetric)."""
    target = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    transform = ImageCms.buildTransform(
        SRGB, target, "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC
    )
    converted = ImageCms.applyTransform(Image.new("RGB", (1, 1), colour), transform)
    assert converted is not None
    return tuple(converted.getpixel((0, 0)))  # type: ignore[arg-type]


def close(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return max(abs(a - b) for a, b in zip(actual, expected, strict=True)) <= 1


def test_the_display_p3_profile_puts_srgb_colours_where_display_p3_has_them() -> None:
    profile = display_profile(KNOWN_PRIMARIES[12])
    assert (
        ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile))).strip() == "Display P3"
    )
    # sRGB's primaries in Display P3 (the published conversion), and white and grey unchanged.
    assert close(srgb_colour_in(profile, (255, 0, 0)), (234, 51, 35))
    assert close(srgb_colour_in(profile, (0, 255, 0)), (117, 251, 76))
    assert close(srgb_colour_in(profile, (255, 255, 255)), (255, 255, 255))
    assert close(srgb_colour_in(profile, (119, 119, 119)), (119, 119, 119))


def test_a_profile_of_srgbs_own_primaries_changes_nothing() -> None:
    bt709 = display_profile(Primaries("BT.709", (0.64, 0.33), (0.30, 0.60), (0.15, 0.06)))
    for colour in ((255, 0, 0), (10, 200, 90), (77, 77, 200), (250, 250, 5)):
        assert close(srgb_colour_in(bt709, colour), colour)


def test_only_colours_a_profile_can_describe_get_one_and_the_others_are_said() -> None:
    assert profile_for(ColourDescription(1, 13)) == (None, "")  # sRGB: the default
    assert profile_for(ColourDescription(2, 2)) == (None, "")  # unspecified: read as sRGB
    profile, name = profile_for(ColourDescription(12, 13))
    assert profile is not None
    assert name == "Display P3"
    assert profile_for(ColourDescription(9, 2))[1] == "BT.2020"
    none, why = profile_for(ColourDescription(12, 16))
    assert none is None
    assert "transfer characteristics 16" in why
    none, why = profile_for(ColourDescription(22, 13))
    assert none is None
    assert "colour primaries 22" in why


def p3_photo(kind: str) -> bytes:
    """A HEIC (libheif writes the nclx box asked for) or an AVIF (Pillow's, its nclx box made to say Display
    P3), without an ICC profile."""
    image = Image.fromarray(np.full((48, 64, 3), (200, 40, 40), np.uint8))
    buffer = io.BytesIO()
    if kind == "HEIF":
        nclx = {"color_primaries": 12, "transfer_characteristics": 13, "matrix_coefficients": 6}
        image.save(buffer, format="HEIF", quality=90, nclx_profile={**nclx, "full_range_flag": 1})
        return buffer.getvalue()
    image.save(buffer, format="AVIF", quality=90)
    data = bytearray(buffer.getvalue())
    at = data.find(b"colrnclx")
    assert at > 0, "Pillow's AVIF has an nclx box"
    struct.pack_into(">HH", data, at + 8, 12, 13)
    return bytes(data)


@pytest.mark.parametrize("kind", ["HEIF", "AVIF"])
def test_a_display_p3_heic_or_avif_without_a_profile_gives_a_jpeg_and_preview_that_carry_one(
    kind: str,
) -> None:
    data = p3_photo(kind)
    assert nclx_in(data) == ColourDescription(12, 13)
    photo = read_photo(data, BIG)
    assert photo.icc_profile is not None
    result = encode_result(photo, photo.pixels.copy())
    assert result.format == "jpeg"
    assert result.note is not None
    assert "Display P3" in result.note
    carried = Image.open(io.BytesIO(result.data)).info["icc_profile"]
    assert close(srgb_colour_in(carried, (255, 0, 0)), (234, 51, 35))
    preview = Image.open(io.BytesIO(encode_preview(photo.pixels, 512, 1, photo.icc_profile)))
    assert preview.info["icc_profile"] == carried


@pytest.mark.parametrize("kind", ["HEIF", "AVIF"])
def test_an_srgb_heic_or_avif_gets_no_profile_and_no_note(kind: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(buffer, format=kind, quality=90)
    photo = read_photo(buffer.getvalue(), BIG)
    assert photo.icc_profile is None
    assert encode_result(photo, photo.pixels.copy()).note == f"the original is {kind}"


def test_the_nclx_boxes_are_looked_for_in_the_leading_bytes_and_must_agree() -> None:
    p3, srgb = (b"colrnclx" + struct.pack(">HHHB", *codes, 6, 0x80) for codes in ((12, 13), (1, 13)))
    assert nclx_in(b"\0" * 100 + p3) == ColourDescription(12, 13)
    assert nclx_in(p3 + b"\0" * 40 + p3) == ColourDescription(12, 13)
    # A second item's box that says otherwise (a gain map's): which is the primary image's is not known.
    assert nclx_in(p3 + b"\0" * 40 + srgb) is None
    assert nclx_in(b"\0" * 70_000 + p3) is None
    assert nclx_in(b"colrnclx\0") is None  # cut short
