"""Untrusted uploads: formats by magic bytes, pixel caps, orientation, modes, mask sizes."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from fluxfill.bridge import jpeg_markers, orientation
from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.bridge.intake import (
    ACCEPTED,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    check_header,
    decode_mask,
    decode_photo,
    encode_preview,
    fit_mask,
    read_photo,
    sniff_format,
)
from tests.support import REPO_ROOT

BIG = 10_000_000


def encode(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def refusal(call: object, *args: object) -> ErrorCode:
    return refusal_and_sentence(call, *args)[0]


def refusal_and_sentence(call: object, *args: object) -> tuple[ErrorCode, str]:
    with pytest.raises(PermanentJobError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.code, str(caught.value)


@pytest.mark.parametrize(("kind", "name"), [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP")])
def test_supported_formats_are_sniffed_and_decoded(kind: str, name: str) -> None:
    data = encode(Image.new("RGB", (30, 20), (10, 200, 30)), kind)
    assert sniff_format(data) == name
    assert decode_photo(data, BIG).shape == (20, 30, 3)


@pytest.mark.parametrize(
    ("kind", "named"),
    [("GIF", "a GIF"), ("BMP", "a BMP"), ("TIFF", "a TIFF (or a camera's raw photo: DNG, CR2, NEF, ARW)")],
)
def test_other_formats_are_refused_by_their_bytes_and_named(kind: str, named: str) -> None:
    """A user who picked a GIF or an iPhone's ProRAW (DNG, a TIFF) learns what was picked, not only what is
    taken."""
    data = encode(Image.new("RGB", (8, 8)), kind)
    code, sentence = refusal_and_sentence(decode_photo, data, BIG)
    assert code is ErrorCode.UNSUPPORTED_IMAGE_FORMAT
    assert sentence == f"the original photo is {named}, not {ACCEPTED}"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"\xff\x0a\xfa\x7f" + bytes(60), "a JPEG XL"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(60), "a JPEG XL"),
        (b"%PDF-1.7\n" + bytes(60), "a PDF"),
        (b"<?xml version='1.0'?><svg" + bytes(60), "an SVG"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'>" + bytes(60), "an SVG"),
        (b"\x00\x00\x00\x18ftypqt  " + bytes(60), "a video or another ISO media file (brand 'qt  ')"),
        (b"", "empty (0 bytes)"),
        (b"\x1f\x8b\x08\x00" + bytes(60), "gzip-compressed data"),
        (b"PK\x03\x04" + bytes(60), "a ZIP archive"),
        (b"\n  <!DOCTYPE html><html><body>Not Found</body></html>", "an HTML page"),
        (b"<HTML><HEAD><TITLE>403 Forbidden", "an HTML page"),
        (b"just some text" + bytes(60), "not {ACCEPTED} (by its first bytes)"),
    ],
    ids=[
        "jxl",
        "jxl-container",
        "pdf",
        "svg-xml",
        "svg",
        "quicktime",
        "empty",
        "gzip",
        "zip",
        "html",
        "HTML",
        "unknown",
    ],
)
def test_files_that_are_no_image_or_no_taken_one_are_named_when_known(data: bytes, named: str) -> None:
    code, sentence = refusal_and_sentence(check_header, data, "original photo", BIG)
    assert code is ErrorCode.UNSUPPORTED_IMAGE_FORMAT
    expected = named.format(ACCEPTED=ACCEPTED)
    assert sentence == (
        f"the original photo is {expected}"
        if named.startswith("not")
        else f"the original photo is {expected}, not {ACCEPTED}"
    )


FILES = Path(__file__).parent / "files"


@pytest.mark.parametrize("stray_bytes", [b"", b"\x00\x17"])
@pytest.mark.parametrize("call", [decode_photo, decode_mask])
def test_a_twelve_bit_jpeg_is_an_unsupported_format_not_a_corrupt_image(
    call: object, stray_bytes: bytes
) -> None:
    """files/twelve-bit.jpg: a valid 64x48 JPEG of 12-bit samples (libjpeg-turbo 3.1 through imagecodecs,
    quality 90), as medical and scientific cameras write; Pillow cannot identify it. Bytes that are no
    marker before its frame (libjpeg skips them with a warning) do not hide the frame."""
    data = (FILES / "twelve-bit.jpg").read_bytes()
    at = data.index(b"\xff\xc1")
    data = data[:at] + stray_bytes + data[at:]
    code, sentence = refusal_and_sentence(call, data, BIG)
    assert code is ErrorCode.UNSUPPORTED_IMAGE_FORMAT
    assert "12-bit JPEG" in sentence
    assert "8-bit" in sentence


def test_a_hierarchical_jpeg_is_an_unsupported_format() -> None:
    """No encoder here writes one: an ordinary JPEG whose frame marker says hierarchical (SOF5) is refused
    by that header, before any decoder sees it."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (1, 2, 3)), "JPEG"))
    at = data.index(b"\xff\xc0")
    data[at + 1] = 0xC5
    code, sentence = refusal_and_sentence(decode_photo, bytes(data), BIG)
    assert code is ErrorCode.UNSUPPORTED_IMAGE_FORMAT
    assert "hierarchical" in sentence


def progressive_of(scans: int, **options: object) -> bytes:
    """A 64x48 progressive JPEG (libjpeg's script: 10 scans) whose last scan, a refinement of the luma's AC
    coefficients, is repeated until it has `scans`: libjpeg warns of a bogus progression and decodes every
    repeat, a pass over the whole frame each (the hostile file's shape, at a size any test can decode)."""
    data = encode(Image.new("RGB", (64, 48), (90, 120, 150)), "JPEG", progressive=True, **options)
    assert data.endswith(b"\xff\xd9")
    last_scan = data[data.rindex(b"\xff\xda") : -2]
    return data[:-2] + last_scan * (scans - 10) + data[-2:]


@pytest.mark.parametrize("call", [decode_photo, decode_mask, check_header])
def test_a_jpeg_of_more_scans_than_any_encoder_writes_is_refused_unread(call: object) -> None:
    """Decoding time grows with scans x pixels: such a file is refused from its markers, before the header
    check lets the coefficient read start, whatever the frame's size."""
    data = progressive_of(MAX_JPEG_SCANS + 1)
    args = (data, "original photo", BIG) if call is check_header else (data, BIG)
    code, sentence = refusal_and_sentence(call, *args)
    assert code is ErrorCode.UNSUPPORTED_IMAGE_FORMAT
    assert f"more than {MAX_JPEG_SCANS} scans" in sentence


def test_a_jpeg_of_as_many_scans_as_allowed_is_decoded() -> None:
    assert decode_photo(progressive_of(MAX_JPEG_SCANS), BIG).shape == (48, 64, 3)


def test_bytes_between_segments_do_not_hide_scans() -> None:
    """libjpeg skips stray bytes before a marker with a warning and decodes on: a count that stopped at the
    first stray byte let a table, a zero byte and a scan, repeated, through uncounted."""
    data = encode(Image.new("RGB", (64, 48), (90, 120, 150)), "JPEG", progressive=True)
    table = data.index(b"\xff\xc4")
    table_segment = data[table : table + 2 + int.from_bytes(data[table + 2 : table + 4], "big")]
    last_scan = data[data.rindex(b"\xff\xda") : -2]
    bomb = data[:-2] + (table_segment + b"\x00" + last_scan) * (MAX_JPEG_SCANS + 1 - 10) + data[-2:]
    Image.open(io.BytesIO(bomb)).load()  # the decoders take it, every scan
    assert jpeg_markers.count_markers(bomb, at_most=MAX_JPEG_SEGMENTS).scans == MAX_JPEG_SCANS + 1
    assert refusal(decode_photo, bomb, BIG) is ErrorCode.UNSUPPORTED_IMAGE_FORMAT


def test_a_jpeg_of_more_segments_than_any_camera_writes_is_refused_before_it_is_read() -> None:
    """4 million empty comments (a 16 MB file) took 6.5 s and 458 MB only to be checked, before Pillow read
    them all again in Python; the count stops at the limit, and a file within it is read as before."""
    photo = encode(Image.new("RGB", (16, 16), (1, 2, 3)), "JPEG")
    comment = b"\xff\xfe\x00\x02"
    code, sentence = refusal_and_sentence(
        check_header, photo[:2] + comment * MAX_JPEG_SEGMENTS + photo[2:], "original photo", BIG
    )
    assert code is ErrorCode.UNSUPPORTED_IMAGE_FORMAT
    assert f"more than {MAX_JPEG_SEGMENTS} marker segments" in sentence
    within = photo[:2] + comment * (MAX_JPEG_SEGMENTS - 9) + photo[2:]
    assert decode_photo(within, BIG).shape == (16, 16, 3)


def test_scans_are_counted_in_the_image_only() -> None:
    """A thumbnail in an APPn segment and an image appended after EOI (an Ultra HDR gain map) have scans of
    their own; restart markers and fill bytes lie between and inside the image's."""
    many = progressive_of(MAX_JPEG_SCANS + 5)
    assert len(many) < 65_000
    photo = encode(Image.new("RGB", (64, 48), (5, 6, 7)), "JPEG", progressive=True, restart_marker_blocks=1)
    with_thumbnail = photo[:2] + b"\xff\xef" + (len(many) + 2).to_bytes(2, "big") + many + photo[2:]
    filled = photo.replace(b"\xff\xda", b"\xff\xff\xff\xda")
    assert jpeg_markers.count_markers(with_thumbnail + many, at_most=MAX_JPEG_SEGMENTS).scans == 10
    assert jpeg_markers.count_markers(filled, at_most=MAX_JPEG_SEGMENTS).scans == 10
    assert decode_photo(with_thumbnail + many, BIG).shape == (48, 64, 3)
    baseline = jpeg_markers.count_markers(encode(Image.new("RGB", (8, 8)), "JPEG"), at_most=MAX_JPEG_SEGMENTS)
    assert baseline.scans == 1
    assert baseline.segments == 9, "APP0, two quantization tables, the frame, four Huffman tables, the scan"
    assert jpeg_markers.count_markers(progressive_of(1000), at_most=20).segments == 21, "counted no further"


def test_a_lossless_jpeg_is_decoded_exactly() -> None:
    """files/lossless.jpg: the result tests' 64x48 textured photo, JPEG lossless (SOF3, libjpeg-turbo 3.1
    through imagecodecs)."""
    from tests.unit.bridge.test_result_image import textured

    assert np.array_equal(decode_photo((FILES / "lossless.jpg").read_bytes(), BIG), textured(64, 48))


def test_truncated_image_is_corrupt() -> None:
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    assert refusal(decode_photo, data[: len(data) // 2], BIG) is ErrorCode.CORRUPT_IMAGE


def test_garbage_after_a_png_signature_is_corrupt() -> None:
    assert refusal(decode_photo, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, BIG) is ErrorCode.CORRUPT_IMAGE


def grown_profile(size: int) -> bytes:
    """An sRGB profile grown to `size` bytes (its header says so), as large as a profile of lookup tables."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return size.to_bytes(4, "big") + srgb[4:] + bytes(size - len(srgb))


def test_a_png_whose_profile_or_xmp_inflates_to_megabytes_is_read_with_its_profile() -> None:
    """Pillow refused a PNG chunk that inflates beyond 1 MB, a guard against text bombs: a colour profile of
    lookup tables, or an editor's XMP, is larger, and the whole photo was refused as corrupt. The cap is now
    the largest profile a JPEG can carry (255 segments of 65,519 bytes)."""
    profile = grown_profile(3_000_000)
    xmp = PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + " " * 2_000_000 + "</x:xmpmeta>", zip=True)
    data = encode(Image.new("RGB", (64, 48), (10, 20, 30)), "PNG", icc_profile=profile, pnginfo=xmp)

    photo = read_photo(data, BIG)

    assert photo.icc_profile == profile
    assert photo.pixels[0, 0].tolist() == [10, 20, 30]


def test_too_many_pixels_is_refused_before_decoding() -> None:
    # A 4000x4000 single-colour PNG compresses to a few KB: a small decompression bomb.
    data = encode(Image.new("L", (4000, 4000)), "PNG")
    assert len(data) < 100_000
    assert refusal(decode_photo, data, 1_000_000) is ErrorCode.IMAGE_TOO_MANY_PIXELS


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif)
    assert decode_photo(data, BIG).shape == (40, 20, 3)


XMP_TURNED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
    b"</x:xmpmeta>"
)


def exif_of(turn: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = turn
    return exif


def png_xmp(xmp: bytes) -> PngInfo:
    """XMP as PNGs carry it: an iTXt chunk of that keyword."""
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info


def imagemagick_exif(turn: int) -> PngInfo:
    """EXIF as ImageMagick writes it into a PNG: hex in a "Raw profile type exif" text chunk."""
    raw = b"Exif\x00\x00" + exif_of(turn).tobytes()
    info = PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}\n", zip=True)
    return info


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("JPEG", {"xmp": XMP_TURNED}),
        ("PNG", {"pnginfo": png_xmp(XMP_TURNED)}),
        ("WEBP", {"xmp": XMP_TURNED}),
        ("AVIF", {"xmp": XMP_TURNED}),
    ],
    ids=["jpeg-xmp", "png-xmp", "webp-xmp", "avif-xmp"],
)
def test_only_an_exif_orientation_turns_the_photo_as_viewers_do(
    kind: str, options: dict[str, object]
) -> None:
    """Browsers and the phones' image decoders turn a photo by its EXIF orientation alone; Pillow also takes
    one from XMP (tiff:Orientation) when EXIF has none. Such a photo was turned though the app showed it as
    stored: a mask painted on it was refused for its aspect, or, turned half round, applied where the user had
    not painted."""
    image = Image.new("RGB", (40, 20))
    data = encode(image, kind, **options)
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6, "Pillow reads one"
    photo = read_photo(data, BIG)
    assert (photo.orientation, photo.pixels.shape) == (1, (20, 40, 3))
    assert decode_mask(data, BIG).shape == (20, 40)


def test_a_pngs_exif_in_imagemagicks_text_chunk_turns_it_as_safari_does() -> None:
    """Safari and iOS read a PNG's EXIF from its eXIf chunk and from ImageMagick's "Raw profile type exif"
    text chunk alike (Chrome and Android from neither); the bridge turns a PNG by its EXIF, wherever it is."""
    data = encode(Image.new("RGB", (40, 20)), "PNG", pnginfo=imagemagick_exif(6))
    photo = read_photo(data, BIG)
    assert (photo.orientation, photo.pixels.shape) == (6, (40, 20, 3))
    assert read_photo(encode(Image.new("RGB", (40, 20)), "PNG", exif=exif_of(6)), BIG).orientation == 6


def test_an_avifs_transformation_turns_the_photo() -> None:
    """AVIF turns by its irot and imir boxes (Pillow writes an EXIF orientation as them, and reads them as
    one); viewers ignore an AVIF's EXIF orientation, and so does Pillow."""
    data = encode(Image.new("RGB", (40, 20)), "AVIF", exif=exif_of(6))
    photo = read_photo(data, BIG)
    assert (photo.orientation, photo.pixels.shape) == (6, (40, 20, 3))


def exif_with_a_rational_model(turn: int) -> bytes:
    """Big-endian TIFF: an Orientation, and a Model (ASCII in the standard) stored as a signed rational, which
    Pillow reads and cannot write again."""
    model_at = 8 + 2 + 2 * 12 + 4
    entries = struct.pack(">HHIHH", 0x0112, 3, 1, turn, 0) + struct.pack(">HHII", 0x0110, 10, 1, model_at)
    return b"MM\x00*" + struct.pack(">IH", 8, 2) + entries + bytes(4) + struct.pack(">ii", -3, 7)


def exif_with_a_one_byte_resolution(turn: int) -> bytes:
    """EXIF as a JPEG carries it ("Exif\\0\\0", big-endian TIFF): an Orientation, a ResolutionUnit, and an
    XResolution of one byte (type UNDEFINED, not a rational), on which Pillow's JPEG reader fails the open."""
    entries = (
        struct.pack(">HHIHH", 0x0112, 3, 1, turn, 0)
        + struct.pack(">HHI4s", 0x011A, 7, 1, b"\x48\x00\x00\x00")
        + struct.pack(">HHIHH", 0x0128, 3, 1, 2, 0)
    )
    return b"Exif\x00\x00MM\x00*" + struct.pack(">IH", 8, 3) + entries + bytes(4)


def avif_turned_with_exif_pillow_cannot_write(width: int = 40, height: int = 24) -> bytes:
    """An AVIF turned a quarter by its irot box (EXIF orientation 6 when Pillow wrote it), whose EXIF says 1
    and holds a tag of another type than the standard's, as an editor that rewrote the EXIF leaves it."""
    exif = exif_of(6)
    exif[0x010E] = "x" * 200  # room for the EXIF put in its place
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    data = bytearray(encode(Image.fromarray(pixels), "AVIF", exif=exif.tobytes()))
    at = data.index(b"MM\x00*")
    odd = exif_with_a_rational_model(1)
    data[at : at + 220] = odd + bytes(220 - len(odd))
    return bytes(data)


def test_a_jpeg_whose_exif_breaks_pillows_reader_is_read_turned_by_that_exif() -> None:
    """Pillow's JPEG reader takes the resolution from EXIF as it opens, and an XResolution of one byte failed
    the open (IndexError, "cannot identify image file"): a photo every viewer shows refused as corrupt."""
    data = encode(Image.new("RGB", (40, 24)), "JPEG", exif=exif_with_a_one_byte_resolution(6))
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(data))
    photo = read_photo(data, BIG)
    assert (photo.orientation, photo.pixels.shape) == (6, (40, 24, 3))
    assert photo.exif == exif_with_a_one_byte_resolution(6)
    assert decode_mask(data, BIG).shape == (40, 24)


def test_an_avif_whose_exif_pillow_cannot_write_again_opens_turned_by_its_boxes() -> None:
    """Pillow writes an AVIF's EXIF anew when its orientation is not its boxes' turn; on EXIF it cannot write,
    the open failed (AttributeError): the job an unexpected error, tried five times and dead-lettered."""
    data = avif_turned_with_exif_pillow_cannot_write(40, 24)
    with pytest.raises(AttributeError):
        Image.open(io.BytesIO(data))
    photo = read_photo(data, BIG)
    assert (photo.orientation, photo.pixels.shape) == (6, (40, 24, 3))
    assert decode_mask(data, BIG).shape == (40, 24)
    check_header(data, "original photo", BIG)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP"])
def test_an_exif_orientation_turns_the_photo_whatever_xmp_says(kind: str) -> None:
    xmp = XMP_TURNED.replace(b'"6"', b'"3"')
    options = {"pnginfo": png_xmp(xmp)} if kind == "PNG" else {"xmp": xmp}
    data = encode(Image.new("RGB", (40, 20)), kind, exif=exif_of(6), **options)
    assert read_photo(data, BIG).orientation == 6


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),  # transparent -> white
        (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("L", (4, 4), 100), (100, 100, 100)),
        (Image.new("P", (4, 4), 0), (0, 0, 0)),
        (Image.new("I;16", (4, 4), 65535), (255, 255, 255)),
    ],
)
def test_photo_modes_become_rgb(image: Image.Image, expected: tuple[int, int, int]) -> None:
    photo = decode_photo(encode(image, "PNG"), BIG)
    assert photo.shape == (4, 4, 3)
    assert tuple(photo[0, 0]) == expected


def test_cmyk_jpeg_becomes_rgb() -> None:
    photo = decode_photo(encode(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG"), BIG)
    assert photo.shape == (4, 4, 3)
    assert photo.min() > 240


def test_mask_uses_alpha_when_transparent_else_luminance() -> None:
    painted = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    painted.putpixel((1, 1), (255, 0, 0, 255))
    mask = decode_mask(encode(painted, "PNG"), BIG)
    assert mask.shape == (4, 4)
    assert mask[1, 1] == 255
    assert mask[0, 0] == 0
    grey = decode_mask(encode(Image.new("RGB", (4, 4), (255, 255, 255)), "PNG"), BIG)
    assert grey.shape == (4, 4)
    assert grey.min() == 255


def test_mask_of_the_same_aspect_is_scaled_to_the_photo() -> None:
    mask = np.zeros((50, 100), np.uint8)
    mask[:, 50:] = 255
    scaled = fit_mask(mask, 100, 200)
    assert scaled.shape == (100, 200)
    assert scaled[:, :100].max() == 0
    assert scaled[:, 100:].min() == 255


def test_mask_of_another_aspect_is_refused() -> None:
    assert refusal(fit_mask, np.zeros((50, 50), np.uint8), 100, 200) is ErrorCode.MASK_SIZE_MISMATCH


@pytest.mark.parametrize("turn", [1, 6, 3, 5])
@pytest.mark.parametrize("size", [(864, 1152), (1000, 3000), (600, 700)])
def test_the_preview_is_a_lanczos_resample_within_two_grey_levels(size: tuple[int, int], turn: int) -> None:
    """Reduced by a whole factor first, for speed: the preview must still look as a Lanczos resample does;
    of a photo that is a turned view of its stored grid (a phone JPEG), reduced as stored, then turned."""
    height, width = size
    base = Image.open(REPO_ROOT / "demo" / "chelsea.png").convert("RGB").resize((width, height))
    noise = np.random.default_rng(5).normal(0, 6, (height, width, 3))  # detail that resampling can alias
    photo = np.clip(np.asarray(base, np.float32) + noise, 0, 255).astype(np.uint8)
    viewed = orientation.upright_view(np.ascontiguousarray(orientation.to_stored(photo, turn)), turn)
    preview = np.asarray(Image.open(io.BytesIO(encode_preview(viewed, 512, turn))), np.int16)
    reference = Image.fromarray(photo).resize((preview.shape[1], preview.shape[0]), Image.Resampling.LANCZOS)
    compressed = np.asarray(Image.open(io.BytesIO(_jpeg(reference))), np.int16)  # the same JPEG loss
    assert np.abs(preview - compressed).mean() < 2.0  # grey levels; Pillow's default gap: within 1


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_preview_longer_side_is_at_most_the_limit() -> None:
    preview = Image.open(io.BytesIO(encode_preview(np.zeros((300, 1200, 3), np.uint8), 512)))
    assert preview.format == "JPEG"
    assert preview.size == (512, 128)


def test_the_preview_carries_the_photos_colour_profile_when_it_describes_rgb() -> None:
    """A phone's photo is often Display P3: a preview without its profile shows its colours shifted, unlike
    the result. A profile of another colour space (a greyscale photo's) does not describe the RGB preview."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    grey = srgb[:16] + b"GRAY" + srgb[20:]
    pixels = np.zeros((30, 40, 3), np.uint8)

    assert Image.open(io.BytesIO(encode_preview(pixels, 512, icc_profile=srgb))).info["icc_profile"] == srgb
    assert "icc_profile" not in Image.open(io.BytesIO(encode_preview(pixels, 512, icc_profile=grey))).info
    assert "icc_profile" not in Image.open(io.BytesIO(encode_preview(pixels, 512))).info


def jpeg_of_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header says width x height: what the header checks read, nothing decoded."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (1, 2, 3)), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


# Phones' largest photos short of a 200 MP mode: 50 MP sensors' full resolution (8192x6144 as Xiaomi's write,
# 8160x6144 as a Pixel's, 8160x6120 as a Samsung's) and the iPhone's 48 MP (8064x6048).
PHONES_LARGEST = [(8192, 6144), (8160, 6144), (8160, 6120), (8064, 6048)]


@pytest.mark.parametrize(("width", "height"), PHONES_LARGEST)
def test_a_phones_full_resolution_photo_is_within_the_default_limits(width: int, height: int) -> None:
    """The bridge's limit, and the model's for a photo sent whole (`reduce_context` false): a 50 MP phone's
    full-resolution photo is 50.1-50.3 million pixels, and a limit of 50,000,000 refused it."""
    from fluxfill.bridge.settings import BridgeSettings
    from tests.support import make_config

    bridge_limit = BridgeSettings.model_fields["max_image_pixels"].default
    check_header(jpeg_of_size(width, height), "original photo", bridge_limit)
    assert width * height <= make_config().max_input_pixels
    assert refusal(check_header, jpeg_of_size(16320, 12240), "original photo", bridge_limit) is (
        ErrorCode.IMAGE_TOO_MANY_PIXELS
    ), "a 200 MP mode's photo is refused, with its code"


def png_of_size(width: int, height: int) -> bytes:
    """A small PNG whose header chunk says width x height (its CRC made to match)."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG"))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("made", [jpeg_of_size, png_of_size], ids=["jpeg", "png"])
def test_a_200_mp_photo_is_refused_by_the_bridges_limit_in_the_bridges_words(made: object) -> None:
    """A Samsung's 200 MP mode writes 16320x12240. Pillow refuses anything over 178,956,970 pixels itself,
    before the bridge's check, in its own words ("could be decompression bomb DOS attack") and with its own
    limit, not the bridge's; and a bridge configured above that limit could not take such a photo at all."""
    assert callable(made)
    data = made(16320, 12240)
    code, sentence = refusal_and_sentence(check_header, data, "original photo", 50_331_648)
    assert code is ErrorCode.IMAGE_TOO_MANY_PIXELS
    assert sentence == ("the original photo is 16320x12240 = 199756800 pixels, over the limit of 50331648")
    check_header(data, "original photo", 200_000_000)  # within a limit set that high
