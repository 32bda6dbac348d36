"""Phone JPEGs decoded by libjpeg-turbo into the model's array: the same upright pixels Pillow gives, and
every JPEG it objects to (or that is not three components) left to Pillow."""

import io

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageOps

from fluxfill.bridge import intake, jpeg_decode, orientation
from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import PermanentJobError

BIG = 10_000_000
ICC = b"\x00\x00\x02\x0cnot a real profile, carried as bytes"


def textured(height: int, width: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """Smooth gradients under noise: the upsampling and the DCT both have work to do."""
    rows, cols = np.mgrid[0:height, 0:width]
    base = np.stack([rows * 255 // height, cols * 255 // width, (rows + cols) % 256], axis=-1)
    noise = np.random.default_rng(seed).integers(-40, 40, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def jpeg(pixels: npt.NDArray[np.uint8], turn: int = 1, **options: object) -> bytes:
    exif = Image.Exif()
    exif[orientation.ORIENTATION_TAG] = turn
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes(), **options)
    return buffer.getvalue()


def pillow_upright(data: bytes) -> npt.NDArray[np.uint8]:
    """What Pillow alone makes of the photo: decoded, turned by its EXIF, RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def header(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# Phones' layouts: the three samplings, progressive, restart intervals, partial MCUs at both edges.
LAYOUTS = {
    "4:4:4": {"subsampling": 0, "quality": 95},
    "4:2:2": {"subsampling": 1, "quality": 90},
    "4:2:0": {"subsampling": 2, "quality": 85},
    "4:2:0 progressive": {"subsampling": 2, "quality": 90, "progressive": True},
    "4:2:0 optimized": {"subsampling": 2, "quality": 90, "optimize": True},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("turn", range(1, 9))
def test_the_upright_pixels_are_pillows_in_every_layout_and_orientation(layout: str, turn: int) -> None:
    data = jpeg(textured(61, 83, seed=turn), turn, **LAYOUTS[layout])
    fast = jpeg_decode.decode_upright(data, header(data), turn)
    assert fast is not None, "a three-component JPEG takes the fast way"
    assert fast.dtype == np.uint8
    # A view of the contiguous stored grid: turned only where a part of it is needed turned.
    assert orientation.to_stored(fast, turn).flags.c_contiguous
    np.testing.assert_array_equal(fast, pillow_upright(data))
    np.testing.assert_array_equal(intake.read_photo(data, BIG).pixels, fast)


def test_restart_markers_decode_to_pillows_pixels() -> None:
    # Pillow writes a restart interval when asked (phones often do): the decoder resets at each marker.
    data = jpeg(textured(64, 96), 6, quality=90, restart_marker_blocks=2)
    assert b"\xff\xdd" in data, "the file has a DRI segment"
    fast = jpeg_decode.decode_upright(data, header(data), 6)
    assert fast is not None
    np.testing.assert_array_equal(fast, pillow_upright(data))


def test_the_fast_way_keeps_the_metadata_the_result_needs() -> None:
    data = jpeg(textured(40, 56), 8, quality=90, icc_profile=ICC)
    photo = intake.read_photo(data, BIG)
    assert (photo.format, photo.orientation, photo.icc_profile) == ("JPEG", 8, ICC)
    assert photo.exif is not None
    exif = Image.Exif()
    exif.load(photo.exif)
    assert exif[orientation.ORIENTATION_TAG] == 8, "the EXIF as uploaded, orientation tag included"
    assert (photo.alpha, photo.greyscale, photo.original) == (None, False, data)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_are_left_to_pillow(mode: str) -> None:
    buffer = io.BytesIO()
    Image.new(mode, (24, 16)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    assert jpeg_decode.decode_upright(data, header(data), 1) is None
    assert intake.read_photo(data, BIG).pixels.shape == (16, 24, 3)


def test_a_jpeg_libjpeg_only_warns_about_is_decoded_by_pillow_as_before() -> None:
    """Stray bytes before a marker: libjpeg warns and decodes on; the fast way refuses, Pillow decodes it."""
    data = jpeg(textured(32, 48), 1, quality=90)
    end = data.rindex(b"\xff\xd9")
    stray = data[:end] + b"\x00\x00\x00" + data[end:]
    assert jpeg_decode.decode_upright(stray, header(stray), 1) is None
    np.testing.assert_array_equal(intake.read_photo(stray, BIG).pixels, pillow_upright(stray))


def test_a_jpeg_cut_short_is_still_corrupt() -> None:
    data = jpeg(textured(64, 64), 1, quality=90)
    cut = data[: len(data) * 2 // 3]
    assert jpeg_decode.decode_upright(cut, header(cut), 1) is None
    with pytest.raises(PermanentJobError) as caught:
        intake.read_photo(cut, BIG)
    assert caught.value.code is ErrorCode.CORRUPT_IMAGE


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("turn", range(1, 9))
def test_the_upright_view_turns_as_pillow_does_and_copies_keep_the_stored_layout(
    turn: int, channels: int
) -> None:
    stored = np.random.default_rng(turn).integers(0, 255, (5, 7, channels), np.uint8)
    expected = orientation.upright(Image.fromarray(stored.squeeze(-1) if channels == 1 else stored), turn)
    turned = orientation.upright_view(stored, turn)
    np.testing.assert_array_equal(turned.reshape(np.asarray(expected).shape), np.asarray(expected))
    assert np.shares_memory(turned, stored), "a view, not a copy"
    np.testing.assert_array_equal(orientation.to_stored(turned, turn), stored)
    copied = orientation.copy_upright(turned, turn)
    np.testing.assert_array_equal(copied, turned)
    assert not np.shares_memory(copied, stored)
    # The copy is a view of a contiguous stored grid again: what is written to it lands where it should.
    assert orientation.to_stored(copied, turn).flags.c_contiguous
    copied[0, 0] = 1 + copied[0, 0] % 200
    assert (copied != turned).sum() == channels
    flat = orientation.contiguous(turned)
    assert flat.flags.c_contiguous
    np.testing.assert_array_equal(flat, turned)
    reversed_channels = turned[..., ::-1]  # pixels not whole in memory: copied as numpy copies
    np.testing.assert_array_equal(orientation.contiguous(reversed_channels), reversed_channels)
    # A copy that never shares memory, whether the view was turned, already contiguous, or one channel flat.
    for view in (turned, stored, stored[..., 0]):
        kept = orientation.contiguous_copy(view)
        np.testing.assert_array_equal(kept, view)
        assert kept.flags.c_contiguous
        assert not np.shares_memory(kept, stored)
    # An upright array laid out upright (as Pillow turns a photo) is copied as it is.
    upright = np.ascontiguousarray(turned)
    assert orientation.stored_layout(upright, turn) is None
    assert orientation.copy_upright(upright, turn).flags.c_contiguous


def test_a_multi_picture_jpeg_decodes_to_its_first_picture_as_pillow_does() -> None:
    """Phones append pictures after the first one's end (MPO, gain maps): the photo is the first."""
    first = jpeg(textured(40, 56, seed=1), 6, quality=90)
    data = first + jpeg(textured(20, 28, seed=2), 1, quality=80)
    fast = jpeg_decode.decode_upright(data, header(data), 6)
    assert fast is not None
    np.testing.assert_array_equal(fast, pillow_upright(first))
    np.testing.assert_array_equal(intake.read_photo(data, BIG).pixels, fast)
