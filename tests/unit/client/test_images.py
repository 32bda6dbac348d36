"""Photos and masks in every accepted form become the arrays the model takes, or a clear InvalidInputError."""

import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from fluxfill.bridge import result_image
from fluxfill.bridge.colour_profile import KNOWN_PRIMARIES, display_profile
from fluxfill.bridge.intake import decode_photo, read_photo
from fluxfill.client.errors import InvalidInputError
from fluxfill.client.images import (
    OUTPUT_QUALITY,
    load_mask,
    load_photo,
    mask_argument,
    mask_from_box,
    mask_from_image,
    open_image,
    parse_box,
    save_rgb,
    selection_warning,
    to_mask,
    to_rgb,
    uses_alpha,
)
from fluxfill.client.jobs import bridge_limits, photo_upload
from fluxfill.inpaint.contract import MAX_INPUT_PIXELS_CEILING
from fluxfill.inpaint.geometry import MASK_ASPECT_TOLERANCE
from tests.unit.bridge.test_colour_profile import p3_photo as coded_p3_photo
from tests.unit.bridge.test_intake import (
    avif_turned_with_exif_pillow_cannot_write,
    exif_with_a_one_byte_resolution,
)
from tests.unit.bridge.test_png_repair import BROKEN, chunk
from tests.unit.bridge.test_png_repair import png as png_of_noise

HEIGHT, WIDTH = 6, 8


def painted() -> np.ndarray:
    """The expected mask: a 3x4 block at x=2..5, y=1..3 repainted."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[1:4, 2:6] = 255
    return mask


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "P", "I;16", "I", "F"])
def test_a_mask_image_of_any_mode_repaints_its_white_area(mode: str) -> None:
    image = Image.fromarray(painted()).convert(mode)
    assert np.array_equal(mask_from_image(image), painted())


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_the_transparent_area_of_an_image_with_alpha_is_repainted(mode: str) -> None:
    alpha = np.where(painted() > 0, 0, 255).astype(np.uint8)
    image = Image.new(mode[:-1] if mode == "LA" else "RGB", (WIDTH, HEIGHT), 200).convert(mode)
    image.putalpha(Image.fromarray(alpha))
    assert np.array_equal(mask_from_image(image), painted())


def test_grey_values_split_at_the_contract_threshold() -> None:
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    assert mask_from_image(Image.fromarray(grey)).tolist() == [[0, 0, 255, 255]]


def test_a_box_repaints_exactly_its_pixels() -> None:
    assert np.array_equal(mask_from_box(parse_box("2, 1,4,3"), HEIGHT, WIDTH), painted())


@pytest.mark.parametrize(
    ("text", "message"),
    [("2,1,4", "box must be x,y,w,h"), ("a,b,c,d", "box must be x,y,w,h"), ("-1,0,2,2", "box must be")],
)
def test_a_malformed_box_is_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_box(text)


@pytest.mark.parametrize(
    ("box", "message"),
    [((0, 0, 0, 3), "is empty"), ((6, 0, 4, 2), "does not fit inside the 8x6 photo")],
)
def test_a_box_outside_the_photo_or_empty_is_refused(box: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        mask_from_box(box, HEIGHT, WIDTH)


def test_box_text_is_told_apart_from_a_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert mask_argument(" 1, 2,3,4") == (1, 2, 3, 4)
    assert mask_argument("mask.png") == Path("mask.png")
    (tmp_path / "1,2,3,4").write_bytes(b"")
    assert mask_argument("1,2,3,4") == Path("1,2,3,4"), "an existing file of that name wins"


@pytest.mark.parametrize("text", ["1.5,2,3,4", "1,2,3", "1,2,3,4,5", ",,,", "1,2,3,"])
def test_numbers_that_make_no_box_are_refused_as_a_box_not_looked_for_as_a_file(text: str) -> None:
    """They were taken for a file name: "1.5,2,3,4: no such file"."""
    with pytest.raises(InvalidInputError, match=f"box must be x,y,w,h in whole pixels, got '{text}'"):
        mask_argument(text)


def test_every_mask_form_gives_the_same_array(tmp_path: Path) -> None:
    Image.fromarray(painted()).save(tmp_path / "mask.png")
    forms = [
        painted(),
        painted() > 0,
        Image.fromarray(painted()),
        tmp_path / "mask.png",
        str(tmp_path / "mask.png"),
    ]
    for form in [*forms, (2, 1, 4, 3)]:
        assert np.array_equal(to_mask(form, HEIGHT, WIDTH), painted()), form
    assert np.array_equal(load_mask(tmp_path / "mask.png"), painted())


def test_a_mask_drawn_on_a_scaled_copy_is_scaled_as_the_bridge_does(tmp_path: Path) -> None:
    # Same rule as the bridge (fluxfill.inpaint.geometry.fit_mask): a mask at half size, same aspect ratio.
    half = np.zeros((30, 40), np.uint8)
    half[5:15, 10:30] = 255
    Image.fromarray(half).save(tmp_path / "half.png")
    scaled = to_mask(tmp_path / "half.png", 60, 80)
    assert scaled.shape == (60, 80)
    assert np.array_equal(scaled[10:30, 20:60], np.full((20, 40), 255, np.uint8))
    assert int(scaled.sum()) == 255 * 20 * 40
    # Just past the tolerance in aspect ratio: refused, naming both sizes.
    off = int(80 * (1 + 2 * MASK_ASPECT_TOLERANCE))
    Image.new("L", (off, 60)).save(tmp_path / "off.png")
    with pytest.raises(InvalidInputError, match=f"the mask is {off}x60 but the photo is 80x60"):
        to_mask(tmp_path / "off.png", 60, 80)


def test_a_mask_file_of_another_size_is_refused_naming_both_sizes(tmp_path: Path) -> None:
    Image.new("L", (4, 4)).save(tmp_path / "small.png")
    with pytest.raises(InvalidInputError, match="the mask is 4x4 but the photo is 8x6"):
        to_mask(tmp_path / "small.png", HEIGHT, WIDTH)


@pytest.mark.parametrize(
    ("mask", "message"),
    [(np.zeros((2, 2, 3), np.uint8), "must be H x W"), (np.zeros((2, 2), np.float32), "uint8 or bool")],
)
def test_a_mask_array_of_the_wrong_kind_is_refused(mask: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        to_mask(mask, 2, 2)


def _picture(kind: str) -> tuple[str, Image.Image]:
    """A 48x32 picture of `kind` with what tells the conversions apart: hidden colours under partial and full
    transparency, 16-bit values, a transparent palette entry."""
    ramp = np.tile(np.linspace(0, 255, 48), (32, 1)).astype(np.uint8)
    colours = np.dstack([ramp, ramp[::-1], np.full_like(ramp, 40)])
    clear = ramp.T[:32, :1].repeat(48, axis=1)  # varies down the picture, 0 (clear) at the top
    if kind == "RGBA":
        return "PNG", Image.fromarray(np.dstack([colours, clear]), "RGBA")
    if kind == "LA":
        return "PNG", Image.fromarray(np.dstack([ramp, clear]), "LA")
    if kind == "P":
        palette = Image.fromarray(colours).quantize(16)
        palette.info["transparency"] = 3
        return "PNG", palette
    if kind == "I;16":
        return "PNG", Image.fromarray(ramp.astype(np.uint16) * 257)
    return kind, Image.fromarray(np.dstack([colours, clear]), "RGBA")  # WEBP, HEIF


@pytest.mark.parametrize("kind", ["RGBA", "LA", "P", "I;16", "WEBP", "HEIF"])
def test_a_photo_becomes_the_picture_the_bridge_gives_the_model(kind: str, tmp_path: Path) -> None:
    """`fluxfill infer` and a job must show the model one picture for one file: the client kept the colours
    hidden under transparency (black here, where the bridge shows white) and clipped 16-bit greyscale to
    white (all but its darkest 1/256)."""
    file_format, picture = _picture(kind)
    path = tmp_path / f"photo.{file_format.lower()}"
    picture.save(path, format=file_format, lossless=True, quality=100)

    bridge_sees = decode_photo(path.read_bytes(), 1_000_000)

    assert np.array_equal(to_rgb(path), bridge_sees)
    with Image.open(path) as opened:
        assert np.array_equal(to_rgb(opened), bridge_sees)
    if kind in {"RGBA", "WEBP"}:
        assert np.array_equal(to_rgb(np.asarray(Image.open(path))), bridge_sees)


def test_an_output_keeps_the_photos_transparency_where_its_format_holds_it(tmp_path: Path) -> None:
    colours = np.random.default_rng(4).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    alpha = np.linspace(0, 255, WIDTH).astype(np.uint8)[None, :].repeat(HEIGHT, axis=0)
    Image.fromarray(np.dstack([colours, alpha]), "RGBA").save(tmp_path / "cut-out.png")
    photo = load_photo(tmp_path / "cut-out.png")
    assert photo.alpha is not None
    assert np.array_equal(photo.alpha, alpha)

    save_rgb(photo.rgb, tmp_path / "out.png", photo)
    save_rgb(photo.rgb, tmp_path / "out.webp", photo)
    save_rgb(photo.rgb, tmp_path / "out.jpg", photo)

    for name in ("out.png", "out.webp"):
        with Image.open(tmp_path / name) as kept:
            assert kept.mode == "RGBA", name
            written = np.asarray(kept)
        assert np.array_equal(written[..., 3], alpha), name
    # The PNG's colours are the photo's own (the WebP is lossy): where the composite's rounding moves one by
    # a level at most.
    opaque_enough = alpha >= 128
    with Image.open(tmp_path / "out.png") as kept_png:
        assert np.abs(np.asarray(kept_png)[..., :3].astype(int) - colours)[opaque_enough].max() <= 1
    with Image.open(tmp_path / "out.jpg") as flat:
        assert flat.mode == "RGB"
    with Image.open(tmp_path / "cut-out.png") as opaque:
        save_rgb(to_rgb(opaque.convert("RGB")), tmp_path / "opaque.png", None)
    with Image.open(tmp_path / "opaque.png") as written_opaque:
        assert written_opaque.mode == "RGB"


def test_photos_in_every_form_become_rgb(tmp_path: Path) -> None:
    rgb = np.arange(HEIGHT * WIDTH * 3, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    rgba = np.dstack([rgb, np.full((HEIGHT, WIDTH), 255, np.uint8)])
    for form in [rgb, rgba, Image.fromarray(rgb), tmp_path / "photo.png"]:
        assert np.array_equal(to_rgb(form), rgb)
    assert to_rgb(rgb[:, :, 0]).shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.png", None, "missing.png: no such file"),
        ("notes.txt", b"hello", "notes.txt: not a readable image"),
    ],
)
def test_unreadable_files_are_named(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        to_rgb(tmp_path / name)


def test_an_output_that_cannot_be_written_is_a_sentence_and_leaves_no_file(tmp_path: Path) -> None:
    """A format's own refusal (XBM holds no colour) was an OSError: "unexpected error" and a log file."""
    rgb = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(
        InvalidInputError, match=r"x\.xbm: cannot be written \(cannot write mode RGB as XBM\)"
    ):
        save_rgb(rgb, tmp_path / "x.xbm")
    assert list(tmp_path.iterdir()) == []


def broken_copies(data: bytes) -> list[bytes]:
    """The file cut short at twenty lengths, and with each of its first 300 bytes set to 0, 255 and flipped:
    a transfer that failed half way, a corrupt header."""
    cuts = [data[:length] for length in range(0, len(data), max(1, len(data) // 20))]
    flips = []
    for at in range(min(len(data), 300)):
        for value in (0x00, 0xFF, data[at] ^ 0x55):
            flips.append(data[:at] + bytes((value,)) + data[at + 1 :])
    return cuts + flips


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP", "HEIF", "AVIF"])
def test_a_broken_photo_or_mask_of_any_format_is_invalid_input_never_another_error(
    tmp_path: Path, kind: str
) -> None:
    """libheif refuses a HEIC cut short with ValueError or RuntimeError, Pillow's AVIF and PNG readers with
    SyntaxError: those escaped the client as "unexpected error" (exit 1 and a log file), where the bridge
    refuses the same files as corrupt_image."""
    pixels = np.random.default_rng(3).integers(0, 256, (40, 56, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    path, refusals = tmp_path / "photo", []
    for broken in broken_copies(buffer.getvalue()):
        path.write_bytes(broken)
        for load in (load_photo, load_mask):
            try:
                load(path)
            except InvalidInputError as error:
                refusals.append(str(error))
    assert len(refusals) > 100
    assert all(refusal.startswith(f"{path}: ") for refusal in refusals)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (WIDTH, HEIGHT))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: the user saw it upright, HEIGHT wide
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert to_rgb(tmp_path / "phone.jpg").shape == (WIDTH, HEIGHT, 3)


@pytest.mark.parametrize("kind", ["PNG", "WEBP", "HEIF"])
def test_exif_that_is_not_tiff_is_ignored_not_a_traceback(tmp_path: Path, kind: str) -> None:
    """Broken metadata is no reason to refuse a photo that decodes: it is taken as stored."""
    path = tmp_path / f"photo.{kind.lower()}"
    Image.new("RGB", (WIDTH, HEIGHT)).save(path, format=kind, exif=b"Exif\x00\x00MM\x00")
    assert to_rgb(path).shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("kind", ["avif", "jpg"])
def test_a_photo_whose_exif_breaks_pillows_reader_is_read_as_the_bridge_reads_it(
    tmp_path: Path, kind: str
) -> None:
    """fluxfill.bridge.exif_fallback: `fluxfill infer` and `submit` failed with an unexpected error and a log
    file (AVIF), or called the photo not a readable image (JPEG)."""
    path = tmp_path / f"edited.{kind}"
    if kind == "avif":
        path.write_bytes(avif_turned_with_exif_pillow_cannot_write(40, 24))
    else:
        Image.new("RGB", (24, 40)).save(path, format="JPEG", exif=exif_with_a_one_byte_resolution(1))
    assert to_rgb(path).shape == (40, 24, 3)
    upload = photo_upload(path, bridge_limits())
    assert (upload.extension, upload.width, upload.height) == (kind, 24, 40)


@pytest.mark.parametrize("broken", ["pHYs of 8 bytes", "zTXt past Pillow's bound"])
def test_a_png_with_a_chunk_libpng_skips_is_read_as_the_bridge_reads_it(tmp_path: Path, broken: str) -> None:
    """fluxfill.bridge.png_repair: `fluxfill infer` and `submit` called it not a readable image."""
    original, pixels = png_of_noise()
    path = tmp_path / "screenshot.png"
    path.write_bytes(BROKEN[broken](original))
    assert np.array_equal(to_rgb(path), pixels)
    assert photo_upload(path, bridge_limits()).data == path.read_bytes()  # the bridge reads it as it is


def test_an_unknown_output_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot write this format"):
        save_rgb(np.zeros((2, 2, 3), np.uint8), tmp_path / "out.nope")


def test_a_failed_write_leaves_neither_the_file_nor_a_partial_one(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"the previous result")
    with pytest.raises(InvalidInputError):
        save_rgb(np.zeros((2, 2, 3), np.uint8), tmp_path / "out.nope")
    save_rgb(np.full((2, 3, 3), 7, np.uint8), target)
    assert np.array_equal(np.asarray(Image.open(target)), np.full((2, 3, 3), 7, np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_an_interrupted_write_keeps_the_previous_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.png"
    save_rgb(np.full((2, 2, 3), 1, np.uint8), target)
    before = target.read_bytes()

    def interrupted(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_rgb(np.full((2, 2, 3), 9, np.uint8), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.parametrize(
    ("mask", "from_alpha", "fragment"),
    [
        (np.zeros((4, 4), np.uint8), False, "selects nothing"),
        (np.full((4, 4), 76, np.uint8), False, "pure red is only 76"),
        (np.zeros((4, 4), np.uint8), True, "opaque everywhere"),
        (np.full((4, 4), 255, np.uint8), True, "TRANSPARENT"),
        (np.full((4, 4), 255, np.uint8), False, "selects 100% of the photo"),
    ],
)
def test_a_mask_that_most_likely_says_something_else_gets_a_warning(
    mask: np.ndarray, from_alpha: bool, fragment: str
) -> None:
    warning = selection_warning(mask, from_alpha)
    assert warning is not None
    assert fragment in warning


def test_an_ordinary_mask_gets_no_warning() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[2:8, 2:8] = 255
    assert selection_warning(mask, from_alpha=False) is None
    assert uses_alpha(Image.new("RGBA", (2, 2)))
    assert not uses_alpha(Image.new("L", (2, 2)))


def test_a_photo_file_is_turned_as_the_bridge_turns_it(tmp_path: Path) -> None:
    """By its EXIF orientation alone, as viewers do: an orientation only XMP states (Pillow's exif_transpose
    applies it) leaves the photo as stored, so a mask for it lines up as it does in the bridge."""
    from fluxfill.client.images import load_rgb

    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
        b"</x:xmpmeta>"
    )
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (WIDTH, HEIGHT)).save(tmp_path / "xmp.jpg", xmp=xmp)
    Image.new("RGB", (WIDTH, HEIGHT)).save(tmp_path / "exif.jpg", exif=exif)
    assert load_rgb(tmp_path / "xmp.jpg").shape == (HEIGHT, WIDTH, 3)
    assert load_rgb(tmp_path / "exif.jpg").shape == (WIDTH, HEIGHT, 3)


def test_a_mask_that_selects_nothing_is_refused_where_refusing_is_asked(tmp_path: Path) -> None:
    """`submit` refuses it (the bridge fails such a job as mask_empty, so nothing is uploaded or published);
    `infer` only warns (the model answers such a call with the photo unchanged)."""
    from fluxfill.client.images import checked_mask

    Image.new("L", (WIDTH, HEIGHT), 76).save(tmp_path / "dark.png")
    with pytest.raises(
        InvalidInputError, match=r"selects nothing.*the bridge would fail the job \(mask_empty\)"
    ):
        checked_mask(tmp_path / "dark.png", HEIGHT, WIDTH, "submit", refuse_empty=True)
    assert not checked_mask(tmp_path / "dark.png", HEIGHT, WIDTH, "infer").any()  # a warning line only


def test_an_image_over_pillows_limit_in_a_library_callers_process_is_refused_in_our_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program using the client keeps its own Pillow limit (the `fluxfill` commands lift it)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (100, 100)).save(tmp_path / "photo.png")
    with pytest.raises(InvalidInputError, match=r"more pixels than Pillow opens in this process"):
        open_image(tmp_path / "photo.png")


def png_without_pixels(width: int, height: int) -> bytes:
    """A PNG (8-bit grey) of this size whose pixel data is empty: only a header may be read of it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_an_image_larger_than_any_server_takes_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as the `fluxfill` commands run
    side = math.isqrt(MAX_INPUT_PIXELS_CEILING) + 1
    (tmp_path / "huge.png").write_bytes(png_without_pixels(side, side))
    with pytest.raises(InvalidInputError, match=rf"{side}x{side} = {side * side} pixels, more than any"):
        open_image(tmp_path / "huge.png")


@pytest.mark.parametrize(("brightest", "hinted"), [(1, True), (0, False), (76, False)])
def test_a_mask_of_zeros_and_ones_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], brightest: int, hinted: bool
) -> None:
    """numpy's or OpenCV's boolean mask saved as 8-bit is 0s and 1s: it selects nothing, and says why."""
    from fluxfill.client.images import checked_mask

    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[1:3, 1:3] = brightest
    Image.fromarray(mask).save(tmp_path / "mask.png")
    checked_mask(tmp_path / "mask.png", HEIGHT, WIDTH, "infer")
    warning = capsys.readouterr().err
    assert "selects nothing" in warning
    assert ("needs its 1s at 255" in warning) is hinted


DISPLAY_P3 = display_profile(KNOWN_PRIMARIES[12])
ORIENTATION_TAG, MAKE_TAG, DATE_TIME_TAG = 0x0112, 0x010F, 0x0132


def p3_photo(kind: str, path: Path) -> None:
    """A saturated red photo whose colours are Display P3: by its ICC profile (an iPhone's JPEG and PNG),
    by nclx code points alone (a HEIC, an AVIF), or a linear PNG described by its gAMA chunk alone."""
    picture = Image.fromarray(np.full((HEIGHT, WIDTH, 3), (220, 30, 40), np.uint8))
    if kind in ("JPEG", "PNG"):
        picture.save(path, format=kind, icc_profile=DISPLAY_P3)
    elif kind in ("HEIF", "AVIF"):
        path.write_bytes(coded_p3_photo(kind))  # the bridge's tests' own
    else:
        linear = PngImagePlugin.PngInfo()
        linear.add(b"gAMA", struct.pack(">I", 100_000))
        picture.save(path, format="PNG", pnginfo=linear)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "HEIF", "AVIF", "linear PNG"])
@pytest.mark.parametrize("output", ["out.jpg", "out.png", "out.webp"])
def test_an_output_carries_the_colour_profile_the_bridge_shows_the_photos_pixels_by(
    tmp_path: Path, kind: str, output: str
) -> None:
    """Written without it, a Display P3 photo's inpainted copy is shown as sRGB: its reds duller, its
    unedited pixels too; a linear PNG's greys darker."""
    photo_path = tmp_path / "photo"
    p3_photo(kind, photo_path)
    photo = load_photo(photo_path)
    # The profile the bridge's preview of the same file carries (its result keeps the photo's own form).
    expected = read_photo(photo_path.read_bytes(), 1_000_000).preview_profile
    assert expected is not None
    assert photo.icc_profile == expected
    if kind in ("JPEG", "PNG"):
        assert expected == DISPLAY_P3
    save_rgb(photo.rgb, tmp_path / output, photo)
    with Image.open(tmp_path / output) as written:
        assert written.info.get("icc_profile") == expected


def test_a_pngs_profile_that_inflates_to_megabytes_is_read_and_carried_as_the_bridge_does(
    tmp_path: Path,
) -> None:
    """Pillow refused any PNG chunk that inflates beyond 1 MB: `infer` failed on a photo whose profile has
    lookup tables (fluxfill.bridge.photo_colours.LARGEST_PROFILE_BYTES)."""
    grown = (3_000_000).to_bytes(4, "big") + DISPLAY_P3[4:] + bytes(3_000_000 - len(DISPLAY_P3))
    path = tmp_path / "photo.png"
    Image.new("RGB", (WIDTH, HEIGHT), (220, 30, 40)).save(path, icc_profile=grown)

    photo = load_photo(path)
    save_rgb(photo.rgb, tmp_path / "out.png", photo)

    assert photo.icc_profile == grown
    with Image.open(tmp_path / "out.png") as written:
        assert written.info.get("icc_profile") == grown


SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
# The header's data colour space is what says whose profile it is.
GREY_PROFILE = SRGB_PROFILE[:16] + b"GRAY" + SRGB_PROFILE[20:]


@pytest.mark.parametrize("kind", ["sRGB", "CMYK", "greyscale"])
def test_no_profile_is_written_where_the_photos_says_nothing_of_rgb_pixels(tmp_path: Path, kind: str) -> None:
    """sRGB needs none; a CMYK photo's profile describes ink, and a greyscale one's grey pixels, not the RGB
    of an output (a WebP's pixels are RGB even of a greyscale photo): carried, it would make viewers read the
    output's pixels wrongly or refuse it."""
    path = tmp_path / "photo.jpg"
    if kind == "sRGB":
        Image.new("RGB", (WIDTH, HEIGHT), (200, 40, 40)).save(path)
    elif kind == "CMYK":
        ink = SRGB_PROFILE[:16] + b"CMYK" + SRGB_PROFILE[20:]
        Image.new("CMYK", (WIDTH, HEIGHT), (0, 200, 200, 0)).save(path, icc_profile=ink)
    else:
        Image.new("L", (WIDTH, HEIGHT), 90).save(path, icc_profile=GREY_PROFILE)
    photo = load_photo(path)
    assert (photo.icc_profile is None) is (kind != "greyscale")
    save_rgb(photo.rgb, tmp_path / "out.webp", photo)
    with Image.open(tmp_path / "out.webp") as written:
        assert written.mode == "RGB"
        assert "icc_profile" not in written.info


@pytest.mark.parametrize("mode", ["L", "LA", "I;16"])
@pytest.mark.parametrize("output", ["out.jpg", "out.png"])
def test_a_greyscale_photos_output_is_greyscale_as_the_bridges_result_is(
    tmp_path: Path, mode: str, output: str
) -> None:
    """A black-and-white photo's result stays black and white, whatever colour the model painted into it, with
    its grey profile (bridge/result_image.py); `fluxfill infer` wrote it in colour, without the profile."""
    grey = np.random.default_rng(8).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    if mode == "I;16":
        stored = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "LA":
        stored = Image.fromarray(np.dstack([grey, np.full_like(grey, 200)]), "LA")
    else:
        stored = Image.fromarray(grey, "L")
    stored.save(tmp_path / "photo.png", icc_profile=GREY_PROFILE)
    photo = load_photo(tmp_path / "photo.png")
    painted_red = photo.rgb.copy()
    painted_red[4:12, 4:12] = (220, 30, 30)

    save_rgb(painted_red, tmp_path / output, photo)

    bridges = result_image.encode_result(
        read_photo((tmp_path / "photo.png").read_bytes(), 10**7), painted_red
    )
    with Image.open(tmp_path / output) as written, Image.open(io.BytesIO(bridges.data)) as result:
        assert written.mode == ("LA" if mode == "LA" and output.endswith(".png") else "L")
        assert written.info.get("icc_profile") == result.info.get("icc_profile") == GREY_PROFILE
        if output.endswith(".png"):  # the bridge's result of a PNG is a PNG
            assert (written.mode, np.asarray(written).tolist()) == (result.mode, np.asarray(result).tolist())


def test_lossy_outputs_are_written_at_the_bridges_qualities(tmp_path: Path) -> None:
    """Pillow's defaults (JPEG 75, WebP 80) blur the whole photo, not only where the model painted."""
    assert OUTPUT_QUALITY["JPEG"] == result_image.REENCODE_QUALITY
    assert OUTPUT_QUALITY["WEBP"] == OUTPUT_QUALITY["AVIF"] == OUTPUT_QUALITY["HEIF"]
    assert OUTPUT_QUALITY["WEBP"] == result_image.LOSSY_WEBP_QUALITY
    noise = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    save_rgb(noise, tmp_path / "out.jpg")
    Image.fromarray(noise).save(tmp_path / "reference.jpg", quality=result_image.REENCODE_QUALITY)
    with Image.open(tmp_path / "out.jpg") as written, Image.open(tmp_path / "reference.jpg") as reference:
        assert written.quantization == reference.quantization
    save_rgb(noise, tmp_path / "out.webp")
    Image.fromarray(noise).save(tmp_path / "reference.webp", quality=result_image.LOSSY_WEBP_QUALITY)
    assert (tmp_path / "out.webp").read_bytes() == (tmp_path / "reference.webp").read_bytes()


def test_a_photo_with_a_huge_tail_is_read_no_further_than_its_colour_description(tmp_path: Path) -> None:
    """Only the file's leading bytes say what the decoded image does not (an AVIF's nclx box, a PNG's colour
    chunks before its pixels): a photo followed by gigabytes (a motion photo's video, a file grown by a
    broken copy; sparse here) is read as the photo, not loaded whole into memory."""
    path = tmp_path / "photo.png"
    linear = PngImagePlugin.PngInfo()
    linear.add(b"gAMA", struct.pack(">I", 100_000))
    Image.new("RGB", (WIDTH, HEIGHT), (30, 60, 90)).save(path, pnginfo=linear)
    with path.open("r+b") as grown:
        grown.truncate(64 << 30)
    try:
        photo = load_photo(path)
    finally:
        path.unlink()  # no tool that copies kept test folders meets a 64 GiB file later
    assert photo.rgb.shape == (HEIGHT, WIDTH, 3)
    assert photo.icc_profile is not None  # the gAMA chunk was read


@pytest.mark.parametrize("output", ["out.jpg", "out.png", "out.webp", "out.avif"])
def test_an_output_keeps_the_photos_exif_but_not_its_orientation(tmp_path: Path, output: str) -> None:
    """When it was taken and with what stay with the edit (a gallery sorts by them), as in a job's result;
    the orientation goes, the pixels being upright: kept, viewers would turn the output a second time."""
    tags = Image.Exif()
    tags[ORIENTATION_TAG] = 6  # stored on its side: turned upright on reading
    tags[MAKE_TAG], tags[DATE_TIME_TAG] = "PhonePhone", "2026:11:30 09:41:00"
    stored = np.zeros((WIDTH, HEIGHT, 3), np.uint8)  # its sides swapped: HEIGHT x WIDTH once upright
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=tags.tobytes())
    photo = load_photo(tmp_path / "photo.jpg")
    assert photo.rgb.shape == (HEIGHT, WIDTH, 3)
    save_rgb(photo.rgb, tmp_path / output, photo)
    with Image.open(tmp_path / output) as written:
        assert written.size == (WIDTH, HEIGHT)
        kept = written.getexif()
    assert kept.get(MAKE_TAG) == "PhonePhone"
    assert kept.get(DATE_TIME_TAG) == "2026:11:30 09:41:00"
    assert ORIENTATION_TAG not in kept
    save_rgb(photo.rgb, tmp_path / f"plain-{output}")
    with Image.open(tmp_path / f"plain-{output}") as plain:
        assert MAKE_TAG not in plain.getexif()  # without the photo, nothing of it
