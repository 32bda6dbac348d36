"""A JPEG result without generation loss outside the edit: only the MCUs the edit changed are encoded anew.

The original's DCT coefficients are read (jpeglib, libjpeg-turbo 2.1), the blocks of every MCU (minimum coded
unit: 8x8 pixels, 16x16 for 4:2:0) in which any pixel changed are replaced by the edited pixels' coefficients
quantized with the original's own tables, and the coefficients are written back with the original's
quantization tables, sampling and markers (EXIF, ICC, XMP, comments) as they were. Every other block keeps
its coefficients bit for bit, so it decodes as before (pixels next to a changed MCU may move by the chroma
upsampling's one-sample reach, as in any decoder's fancy upsampling).

Baseline and extended Huffman-coded JPEGs in YCbCr (4:4:4, 4:2:2, 4:2:0, 4:4:0) or greyscale are spliced;
anything else is refused with the reason (SpliceRefusedError), and the caller re-encodes the whole image; so
is an original whose corrupt scan decodes to coefficients that cannot be written back.

Why jpeglib: the one maintained binding that both reads and writes coefficient arrays with the markers
(PyTurboJPEG and simplejpeg work in pixels; jpegio is unmaintained). It works through files, so a splice
costs a temporary file of the JPEG's size for a moment on each side (memory on Cloud Run, where /tmp is in
RAM).
"""

import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jpeglib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

# libjpeg-turbo: 1.5x faster than libjpeg 9 at reading and writing 12 MP of coefficients here.
jpeglib.version.set("turbo210")
# jpeglib is not thread-safe: two reads or writes at once corrupt the C heap and kill the process (seen with
# four threads splicing 0.3 MP JPEGs). Every call into it holds this lock; a bridge running several jobs
# splices one at a time (0.2 s to read and 0.35 s to write 12 MP here), while the GPU is the bottleneck.
_LIBJPEG = threading.Lock()
# Reads ahead of the splice (CoefficientsAhead); two, for the bridges that run two jobs at once.
_READER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jpeg-coefficients")

# (horizontal, vertical) sampling of Y, Cb, Cr.
_SPLICEABLE_SAMPLING = {
    ((1, 1), (1, 1), (1, 1)): "4:4:4",
    ((2, 1), (1, 1), (1, 1)): "4:2:2",
    ((2, 2), (1, 1), (1, 1)): "4:2:0",
    ((1, 2), (1, 1), (1, 1)): "4:4:0",
}
_BLOCK = 8
_SOS, _APP0, _APP15, _COM = 0xDA, 0xE0, 0xEF, 0xFE
# MCU rows encoded at a time: 256 pixel rows of 4:2:0.
_BAND_MCU_ROWS = 16
# Row u of the orthonormal 8-point DCT-II as JPEG scales it: coefficients = M @ block @ M.T, natural order.
_U = np.arange(_BLOCK)
_DCT = np.cos((2 * _U[None, :] + 1) * _U[:, None] * np.pi / 16) / 2
_DCT[0] /= np.sqrt(2)


class SpliceRefusedError(Exception):
    """This JPEG cannot be spliced; the message says why (recorded with the re-encoded result)."""


def sampling_name(samp_factor: npt.NDArray[np.int_]) -> str | None:
    """ "4:2:0" and the like for a spliceable YCbCr sampling, "greyscale" for one component, else None.

    jpeglib gives each component's factors as (vertical, horizontal).
    """
    factors = tuple((int(h), int(v)) for v, h in samp_factor)
    if len(factors) == 1:
        return "greyscale"
    return _SPLICEABLE_SAMPLING.get(factors)  # type: ignore[arg-type]


def read_coefficients(original: bytes) -> jpeglib.DCTJPEG:
    """The original's coefficients, quantization tables and sampling; SpliceRefusedError when it cannot be
    spliced (the reason)."""
    with tempfile.TemporaryDirectory(prefix="fluxfill-splice-") as folder:
        source = Path(folder) / "original.jpg"
        source.write_bytes(original)
        jpeg = _read(source)
    # Written without its source: jpeglib would otherwise decode the whole original again only to overwrite
    # every coefficient it read (30 ms at 12 MP); tables and sampling are passed explicitly either way.
    jpeg.content = None
    return jpeg


class CoefficientsAhead:
    """The original's coefficients read on a worker thread (libjpeg releases the GIL) from the moment the
    photo is accepted, so the ~0.2 s read at 12 MP overlaps the inference instead of following it."""

    def __init__(self, original: bytes) -> None:
        self._future: Future[jpeglib.DCTJPEG] = _READER.submit(read_coefficients, original)

    def result(self) -> jpeglib.DCTJPEG:
        """The coefficients; raises SpliceRefusedError as read_coefficients does."""
        return self._future.result()


def splice(
    original: bytes,
    edited: npt.NDArray[np.uint8],
    changed: npt.NDArray[np.bool_],
    coefficients: jpeglib.DCTJPEG | None = None,
) -> bytes:
    """The original with every MCU where `changed` holds re-encoded from `edited` (both in the stored grid,
    height x width [x 3]); the original's bytes themselves when nothing changed.

    `coefficients`: read_coefficients(original), when read ahead (they are changed in place).
    """
    jpeg = coefficients if coefficients is not None else read_coefficients(original)
    mcus = _changed_mcus(changed, jpeg)
    if not mcus.any():
        return original
    _replace_blocks(jpeg, edited, (changed.shape[0], changed.shape[1]), mcus)
    with tempfile.TemporaryDirectory(prefix="fluxfill-splice-") as folder:
        target = Path(folder) / "edited.jpg"
        # Optimized Huffman tables: 10 % smaller than the standard ones, for ~140 ms at 12 MP (2026-12-03,
        # 2 cores): the app's users download the result, often more than once.
        try:
            with _LIBJPEG:
                jpeg.write_dct(os.fspath(target), flags=["+OPTIMIZE_CODING"])
        # A scan with corrupt data decodes (libjpeg warns and goes on, as viewers do) to coefficients beyond
        # what an encoder writes ("DCT coefficient out of range"): such an original is re-encoded whole.
        except Exception as error:
            raise SpliceRefusedError(f"its coefficients cannot be written back: {error}") from None
        return with_metadata_of(original, target.read_bytes())


def header_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment bytes) of every segment between SOI and the first scan."""
    segments, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == _SOS:
            break
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        segments.append((marker, data[at:end]))
        at = end
    return segments


def _is_metadata(marker: int) -> bool:
    return _APP0 <= marker <= _APP15 or marker == _COM


def with_metadata_of(original: bytes, written: bytes) -> bytes:
    """`written` with its APPn and COM segments replaced by the original's, byte for byte.

    libjpeg writes a JFIF header of its own beside the markers jpeglib copies back; taking the original's
    segments verbatim keeps EXIF, ICC, XMP and comments exactly as the phone wrote them.
    """
    metadata = b"".join(segment for marker, segment in header_segments(original) if _is_metadata(marker))
    header = header_segments(written)
    rest = sum(len(segment) for _, segment in header) + 2
    tables = b"".join(segment for marker, segment in header if not _is_metadata(marker))
    return written[:2] + metadata + tables + written[rest:]


def _read(path: Path) -> jpeglib.DCTJPEG:
    try:
        with _LIBJPEG:
            jpeg = jpeglib.read_dct(os.fspath(path))
            jpeg.load()
    except Exception as error:  # libjpeg's own refusals (arithmetic coding, lossless, 12-bit) come as errors
        raise SpliceRefusedError(f"its coefficients cannot be read: {error}") from None
    if jpeg.progressive_mode:
        raise SpliceRefusedError("it is progressive")
    space = str(jpeg.jpeg_color_space).removeprefix("JCS_")
    if space not in ("YCbCr", "GRAYSCALE"):
        raise SpliceRefusedError(f"its colour space is {space}")
    if sampling_name(jpeg.samp_factor) is None:
        factors = "/".join(f"{h}x{v}" for v, h in jpeg.samp_factor.tolist())
        raise SpliceRefusedError(f"its sampling factors {factors} are not 4:4:4, 4:2:2, 4:2:0 or 4:4:0")
    return jpeg


def _mcu_size(jpeg: jpeglib.DCTJPEG) -> tuple[int, int]:
    """MCU height and width in pixels."""
    v_max, h_max = (int(value) for value in jpeg.samp_factor.max(axis=0))
    return _BLOCK * v_max, _BLOCK * h_max


def _changed_mcus(changed: npt.NDArray[np.bool_], jpeg: jpeglib.DCTJPEG) -> npt.NDArray[np.bool_]:
    """Which MCUs (rows x columns) hold a changed pixel (one MCU row at a time: no full copy)."""
    mcu_h, mcu_w = _mcu_size(jpeg)
    height, width = changed.shape
    cols = -(-width // mcu_w)
    grid = np.zeros((-(-height // mcu_h), cols), bool)
    columns = np.zeros(cols * mcu_w, bool)
    for row in range(grid.shape[0]):
        columns[:width] = changed[row * mcu_h : (row + 1) * mcu_h].any(axis=0)
        grid[row] = columns.reshape(cols, mcu_w).any(axis=1)
    return grid


def _replace_blocks(
    jpeg: jpeglib.DCTJPEG,
    edited: npt.NDArray[np.uint8],
    size: tuple[int, int],
    changed: npt.NDArray[np.bool_],
) -> None:
    """Put the edited pixels' blocks in place in every `changed` MCU, a band of MCU rows at a time, within
    the changed ones' bounding box (the float temporaries stay a few MB whatever the edit's size)."""
    mcu_h, mcu_w = _mcu_size(jpeg)
    rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
    bottom, left, right = int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    for top in range(int(rows[0]), bottom, _BAND_MCU_ROWS):
        band = changed[top : min(top + _BAND_MCU_ROWS, bottom), left:right]
        if band.any():
            pixel_rows = (top * mcu_h, (top + band.shape[0]) * mcu_h)
            region = _edge_padded(edited, size, pixel_rows, (left * mcu_w, right * mcu_w))
            _replace_band(jpeg, region, (top, left), band)


def _replace_band(
    jpeg: jpeglib.DCTJPEG,
    region: npt.NDArray[np.float32],
    first_mcu: tuple[int, int],
    changed: npt.NDArray[np.bool_],
) -> None:
    """Encode `region` (whole MCUs from `first_mcu` on) and put its blocks where `changed` holds."""
    top, left = first_mcu
    v_max, h_max = (int(value) for value in jpeg.samp_factor.max(axis=0))
    planes = _ycbcr(region) if jpeg.num_components == 3 else [_luma(region)]
    components = [jpeg.Y, jpeg.Cb, jpeg.Cr][: jpeg.num_components]
    for index, (plane, coefficients) in enumerate(zip(planes, components, strict=True)):
        v_samp, h_samp = (int(value) for value in jpeg.samp_factor[index])
        sub = _downsampled(plane, v_max // v_samp, h_max // h_samp)
        table = jpeg.qt[int(jpeg.quant_tbl_no[index])].astype(np.float32)
        blocks = _quantized_dct(sub, table)
        mask = np.repeat(np.repeat(changed, v_samp, axis=0), h_samp, axis=1)
        row0, col0 = top * v_samp, left * h_samp
        # The last MCU row or column may hold blocks past the component's edge: those are not stored.
        rows = min(blocks.shape[0], coefficients.shape[0] - row0)
        cols = min(blocks.shape[1], coefficients.shape[1] - col0)
        target = coefficients[row0 : row0 + rows, col0 : col0 + cols]
        keep = mask[:rows, :cols, None, None]
        target[...] = np.where(keep, blocks[:rows, :cols], target)


def _edge_padded(
    pixels: npt.NDArray[np.uint8], size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """pixels[rows, cols], past the image's edge filled with its last row and column (as encoders pad)."""
    height, width = size
    row_index = np.minimum(np.arange(*rows), height - 1)
    col_index = np.minimum(np.arange(*cols), width - 1)
    region: npt.NDArray[np.float32] = pixels[row_index][:, col_index].astype(np.float32)
    return region


def _ycbcr(rgb: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    """JFIF's full-range YCbCr, as libjpeg converts."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return [
        0.299 * red + 0.587 * green + 0.114 * blue,
        -0.168736 * red - 0.331264 * green + 0.5 * blue + 128.0,
        0.5 * red - 0.418688 * green - 0.081312 * blue + 128.0,
    ]


def _luma(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return pixels if pixels.ndim == 2 else _ycbcr(pixels)[0]


def _downsampled(plane: npt.NDArray[np.float32], down_v: int, down_h: int) -> npt.NDArray[np.float32]:
    """Box-averaged by the sampling ratio (libjpeg's own downsampling)."""
    if down_v == down_h == 1:
        return plane
    height, width = plane.shape
    averaged: npt.NDArray[np.float32] = plane.reshape(height // down_v, down_v, width // down_h, down_h).mean(
        axis=(1, 3)
    )
    return averaged


def _quantized_dct(plane: npt.NDArray[np.float32], table: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """The plane's 8x8 blocks (rows x cols x 8 x 8) transformed, quantized by `table`, natural order."""
    height, width = plane.shape
    blocks = (plane - 128.0).reshape(height // _BLOCK, _BLOCK, width // _BLOCK, _BLOCK).swapaxes(1, 2)
    coefficients = _DCT @ blocks @ _DCT.T
    quantized: npt.NDArray[np.int16] = np.rint(coefficients / table).astype(np.int16)
    return quantized
