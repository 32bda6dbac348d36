"""A JPEG result without generation loss outside the edit: only the MCUs the edit changed are encoded anew.

The original's DCT coefficients are read (jpeglib, libjpeg-turbo 2.1), the blocks of every MCU (minimum coded
unit: 8x8 pixels, 16x16 for 4:2:0) in which any pixel changed are replaced by the edited pixels' coefficients
quantized with the original's own tables, and the coefficients are written back with the original's
quantization tables, sampling and markers (EXIF, ICC, XMP, comments) as they were, Huffman-coded as the
original was (standard or optimized tables: fluxfill.bridge.jpeg_markers). Every other block keeps
its coefficients bit for bit, so it decodes as before (pixels next to a changed MCU may move by the chroma
upsampling's one-sample reach, as in any decoder's fancy upsampling).

JPEGs in YCbCr (4:4:4, 4:2:2, 4:2:0, 4:4:0) or greyscale are spliced, Huffman-coded (baseline or extended)
or arithmetic-coded (libjpeg-turbo reads it; the result is written Huffman-coded with optimized tables, which
every decoder reads, the coefficients unchanged), sequential or progressive (the web's and messaging apps'
photos often are: the result is written sequentially, with optimized tables, a few per cent larger than the
original, where a whole re-encode changed every pixel and made it half as large again); anything else is
refused with the reason
(SpliceRefusedError), and the caller re-encodes the whole image; so is an original whose corrupt scan decodes
to coefficients that cannot be written back.

Why jpeglib: the one maintained binding that both reads and writes coefficient arrays with the markers
(PyTurboJPEG and simplejpeg work in pixels; jpegio is unmaintained). It works through files, so a splice
costs a temporary file of the JPEG's size for a moment on each side (memory on Cloud Run, where /tmp is in
RAM).
"""

import contextvars
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import jpeglib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import structlog

from fluxfill.bridge import jpeg_markers, orientation
from fluxfill.inpaint.geometry import Box

# libjpeg-turbo: 1.5x faster than libjpeg 9 at reading and writing 12 MP of coefficients here.
jpeglib.version.set("turbo210")
# jpeglib is not thread-safe: two reads or writes at once corrupt the C heap and kill the process (seen with
# four threads splicing 0.3 MP JPEGs). Every call into it holds this lock (_in_libjpeg); a bridge running
# several jobs splices one at a time (0.1 s to read and 0.15 s to write 12 MP here), while the GPU is the
# bottleneck.
_LIBJPEG = threading.Lock()
# APPn and COM segments jpeglib keeps while reading (its MAX_MARKER): it fails beyond them.
JPEGLIB_MAX_MARKERS = 50
logger = structlog.get_logger(__name__)
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
# MCU rows encoded at a time: 64 pixel rows of 4:2:0.
_BAND_MCU_ROWS = 4
# Block rows compared at a time: 256 pixel rows.
_BAND_BLOCK_ROWS = 32
# Row u of the orthonormal 8-point DCT-II as JPEG scales it: coefficients = M @ block @ M.T, natural order.
_U = np.arange(_BLOCK)
_DCT = np.cos((2 * _U[None, :] + 1) * _U[:, None] * np.pi / 16) / 2
_DCT[0] /= np.sqrt(2)
# vec(M @ block @ M.T) = kron(M, M) @ vec(block) for row-major vec: transposed, it multiplies rows of blocks.
_DCT_2D = np.kron(_DCT, _DCT).T.astype(np.float32)


class _Int16Plane(np.ndarray):  # type: ignore[type-arg]
    """A coefficient plane jpeglib's write_dct takes as it is: it converts every plane with `astype`, which
    copies even an int16 plane, beside the copy libjpeg makes of it (6 bytes a pixel more at 4:4:4: a whole
    job on a 4:4:4 JPEG peaked at 30 bytes a pixel)."""

    def astype(self, dtype: npt.DTypeLike, *args: object, **kwargs: object) -> npt.NDArray[np.int16]:  # type: ignore[override]
        if np.dtype(dtype) == self.dtype and self.flags.c_contiguous and not args and not kwargs:
            return self
        return super().astype(dtype, *args, **kwargs)  # type: ignore[call-overload,no-any-return]


def _hand_over_uncopied(jpeg: jpeglib.DCTJPEG) -> None:
    """Make write_dct take the planes without a copy of its own (views: nothing is copied here either)."""
    for name in ("Y", "Cb", "Cr"):
        plane = getattr(jpeg, name)
        if plane is not None:
            setattr(jpeg, name, plane.view(_Int16Plane))


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
    _refuse_by_frame(original)
    coded = jpeg_markers.coded_image(original)
    if coded.metadata_segments >= JPEGLIB_MAX_MARKERS:
        # jpeglib would write one past its arrays (C globals) on the 51st, then fail.
        raise SpliceRefusedError(f"it has {coded.metadata_segments} JFIF and Adobe segments")
    with tempfile.TemporaryDirectory(prefix="fluxfill-splice-") as folder:
        source = Path(folder) / "original.jpg"
        with source.open("wb") as file:
            file.writelines(coded.pieces)
        jpeg = _read(source)
    # Written without its source: jpeglib would otherwise decode the whole original again only to overwrite
    # every coefficient it read (30 ms at 12 MP); tables and sampling are passed explicitly either way.
    jpeg.content = None
    return jpeg


class CoefficientsAhead:
    """The original's coefficients read on a worker thread (libjpeg releases the GIL) from the moment the
    photo is accepted, so the ~0.2 s read at 12 MP overlaps the inference instead of following it."""

    def __init__(self, original: bytes) -> None:
        # In the job's context: what libjpeg says of the photo is logged with the job's ids.
        read = contextvars.copy_context().run
        self._future: Future[jpeglib.DCTJPEG] = _READER.submit(read, read_coefficients, original)

    def result(self) -> jpeglib.DCTJPEG:
        """The coefficients; raises SpliceRefusedError as read_coefficients does."""
        return self._future.result()


def splice(
    original: bytes,
    edited: npt.NDArray[np.uint8],
    changed_blocks: npt.NDArray[np.bool_],
    coefficients: jpeglib.DCTJPEG | None = None,
) -> bytes:
    """The original with every MCU holding a changed 8x8 block re-encoded from `edited`; the original's bytes
    themselves when nothing changed. Both in the stored grid: `edited` height x width [x 3], `changed_blocks`
    one flag per 8x8 block from the top-left (changed_blocks() makes it), ceil(height/8) x ceil(width/8).

    `coefficients`: read_coefficients(original), when read ahead (they are changed in place).
    """
    jpeg = coefficients if coefficients is not None else read_coefficients(original)
    mcus = _changed_mcus(changed_blocks, jpeg)
    if not mcus.any():
        return original
    _replace_blocks(jpeg, edited, (edited.shape[0], edited.shape[1]), mcus)
    with tempfile.TemporaryDirectory(prefix="fluxfill-splice-") as folder:
        target = Path(folder) / "edited.jpg"
        # Huffman tables as the original's: standard, or optimized (fluxfill.bridge.jpeg_markers).
        flags = [] if jpeg_markers.has_standard_tables(original) else ["+OPTIMIZE_CODING"]
        _hand_over_uncopied(jpeg)
        try:
            with _in_libjpeg():
                jpeg.write_dct(os.fspath(target), flags=flags)
        # A scan with corrupt data decodes (libjpeg warns and goes on, as viewers do) to coefficients beyond
        # what an encoder writes ("DCT coefficient out of range"): such an original is re-encoded whole.
        except Exception as error:
            raise SpliceRefusedError(f"its coefficients cannot be written back: {error}") from None
        return jpeg_markers.with_metadata_of(original, target.read_bytes())


def changed_blocks(
    before: npt.NDArray[np.uint8],
    after: npt.NDArray[np.uint8],
    from_end: tuple[bool, bool] = (False, False),
    within: Box | None = None,
) -> npt.NDArray[np.bool_]:
    """Which 8x8 blocks of two same-sized images (height x width x channels) differ in any byte.

    `from_end`: (rows, columns) whose blocks are counted from the last row or column, so the partial block
    is the first: a JPEG's blocks start at its stored top-left corner, which an upright photo may hold at
    any corner. `within`: the only pixels that may differ (the model's context, fluxfill.bridge.context):
    only the blocks over it are compared, and `before` may hold only those pixels (a photo edited in place:
    outside `within` it is `after`). Compared a band of block rows at a time (the comparison's flags
    stay a few MB, not a byte a sample of the photo), each reduced over reshaped views, no padded copy
    (15 ms at 12 MP).
    """
    if within is None:
        return _changed_blocks(before, after, from_end)
    height, width = after.shape[:2]
    top, bottom, first_row = _block_span(within.top, within.bottom, height, from_end[0])
    left, right, first_col = _block_span(within.left, within.right, width, from_end[1])
    after_span = after[top:bottom, left:right]
    if before.shape[:2] == (height, width):
        before_span = before[top:bottom, left:right]
    else:  # `within` alone, as it was; the span's few pixels around it are as they are
        before_span = orientation.contiguous_copy(after_span)
        before_span[within.top - top : within.bottom - top, within.left - left : within.right - left] = before
    # The span starts and ends on block edges, so its own blocks are the image's, partial one included.
    span = _changed_blocks(before_span, after_span, from_end)
    grid = np.zeros((-(-height // _BLOCK), -(-width // _BLOCK)), bool)
    grid[first_row : first_row + span.shape[0], first_col : first_col + span.shape[1]] = span
    return grid


def _block_span(start: int, stop: int, length: int, from_end: bool) -> tuple[int, int, int]:
    """The block edges enclosing [start, stop) along a side of `length` pixels, and the first block's index
    (with `from_end`, the partial block is the first)."""
    head = length % _BLOCK if from_end else 0

    def block_of(position: int) -> int:
        return (position - head) // _BLOCK + (1 if head else 0) if position >= head else 0

    def start_of(block: int) -> int:
        return head + (block - 1) * _BLOCK if head and block else block * _BLOCK

    first, last = block_of(start), block_of(stop - 1)
    return start_of(first), min(length, start_of(last + 1)), first


def _changed_blocks(
    before: npt.NDArray[np.uint8], after: npt.NDArray[np.uint8], from_end: tuple[bool, bool]
) -> npt.NDArray[np.bool_]:
    height, width = before.shape[:2]
    per_pixel = before.size // (height * width)
    head_rows = (height % _BLOCK) if from_end[0] else 0
    head_cols = ((width % _BLOCK) if from_end[1] else 0) * per_pixel
    edges = sorted({0, *range(head_rows, height, _BLOCK), height})  # where each block row starts
    bands = []
    for first in range(0, len(edges) - 1, _BAND_BLOCK_ROWS):
        top, bottom = edges[first], edges[min(first + _BAND_BLOCK_ROWS, len(edges) - 1)]
        differs = np.not_equal(before[top:bottom], after[top:bottom]).reshape(bottom - top, -1)
        rows = _any_in_groups(differs, 0, _BLOCK, head_rows if top == 0 else 0)
        bands.append(_any_in_groups(rows, 1, _BLOCK * per_pixel, head_cols))
    return np.concatenate(bands)


def _any_in_groups(flags: npt.NDArray[np.bool_], axis: int, size: int, head: int) -> npt.NDArray[np.bool_]:
    """Whether any flag holds in each group along `axis` (0 or 1): `head` first, then `size` each, the rest
    last. The whole groups are reduced over a reshaped view (a grouped reduceat is 10x slower)."""
    length = flags.shape[axis]
    whole = (length - head) // size * size

    def part(start: int, stop: int) -> npt.NDArray[np.bool_]:
        return flags[start:stop] if axis == 0 else flags[:, start:stop]

    pieces = []
    if head:
        pieces.append(part(0, head).any(axis=axis, keepdims=True))
    if whole:
        groups = (whole // size, size, flags.shape[1]) if axis == 0 else (flags.shape[0], whole // size, size)
        pieces.append(part(head, head + whole).reshape(groups).any(axis=axis + 1))
    if head + whole < length:
        pieces.append(part(head + whole, length).any(axis=axis, keepdims=True))
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=axis)


def _refuse_by_frame(original: bytes) -> None:
    """The refusals the frame header tells, before anything is read: reading a CMYK photo's four planes of
    coefficients only to refuse them took 8 bytes a pixel beside the job (28.6 a pixel in all, over
    HANDLER_BYTES_PER_PIXEL)."""
    header = jpeg_markers.frame(original)
    if header is None:
        return
    if header.lossless:
        raise SpliceRefusedError("it is lossless (it has no DCT coefficients to keep)")
    if len(header.sampling) == 4:
        raise SpliceRefusedError("its colour space is CMYK or YCCK (four components)")
    if len(header.sampling) == 3 and header.sampling not in _SPLICEABLE_SAMPLING:
        raise _sampling_refused(header.sampling)


def _sampling_refused(factors: Iterable[tuple[int, int]]) -> SpliceRefusedError:
    """The refusal of a sampling no splice takes, each component's factors as (horizontal, vertical)."""
    named = "/".join(f"{h}x{v}" for h, v in factors)
    return SpliceRefusedError(f"its sampling factors {named} are not 4:4:4, 4:2:2, 4:2:0 or 4:4:0")


def _read(path: Path) -> jpeglib.DCTJPEG:
    try:
        with _in_libjpeg():
            jpeg = jpeglib.read_dct(os.fspath(path))
            jpeg.load()
    except Exception as error:  # libjpeg's own refusals come as errors
        raise SpliceRefusedError(f"its coefficients cannot be read: {_libjpeg_reason(error, path)}") from None
    space = str(jpeg.jpeg_color_space).removeprefix("JCS_")
    if space not in ("YCbCr", "GRAYSCALE"):
        raise SpliceRefusedError(f"its colour space is {space}")
    if sampling_name(jpeg.samp_factor) is None:
        raise _sampling_refused((h, v) for v, h in jpeg.samp_factor.tolist())
    return jpeg


@contextmanager
def _in_libjpeg() -> Iterator[None]:
    """Holds _LIBJPEG for a call into jpeglib, its warnings logged: the one way in, because the capture below
    swaps the process's fd 2 and is safe only under the lock.

    libjpeg prints its warnings and errors on a photo's corrupt data ("Corrupt JPEG data: 22 extraneous
    bytes before marker 0xd9", "Premature end of JPEG file") on the process's stderr, each twice: bare text,
    which Cloud Logging gives no severity (Cloud Run) or ERROR (GKE), naming no job. Here the process's
    stderr is a file for the call's length, and what libjpeg said becomes a WARNING entry each, once, with
    the job's ids. A line another thread wrote meanwhile (a library's JSON entry) goes on to stderr as it
    was."""
    with _LIBJPEG, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:  # a refusal too: what libjpeg said of it is told
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in dict.fromkeys(captured.read().decode("utf-8", "replace").splitlines()):
                if line.startswith("{"):
                    os.write(2, line.encode() + b"\n")
                elif line.strip():
                    logger.warning(f"libjpeg: {line}")


def _libjpeg_reason(error: Exception, path: Path) -> str:
    """jpeglib's message without the temporary file's path ("reading info of PATH failedREASON"): the reason
    is recorded in the session, where a path means nothing."""
    text = str(error).replace(os.fspath(path), "the original") or type(error).__name__
    return re.sub(r" failed(?=\S)", " failed: ", text)


def _mcu_size(jpeg: jpeglib.DCTJPEG) -> tuple[int, int]:
    """MCU height and width in pixels."""
    v_max, h_max = (int(value) for value in jpeg.samp_factor.max(axis=0))
    return _BLOCK * v_max, _BLOCK * h_max


def _changed_mcus(blocks: npt.NDArray[np.bool_], jpeg: jpeglib.DCTJPEG) -> npt.NDArray[np.bool_]:
    """Which MCUs (rows x columns) hold a changed 8x8 block."""
    v_max, h_max = (int(value) for value in jpeg.samp_factor.max(axis=0))
    rows, cols = -(-blocks.shape[0] // v_max), -(-blocks.shape[1] // h_max)
    padded = np.zeros((rows * v_max, cols * h_max), bool)
    padded[: blocks.shape[0], : blocks.shape[1]] = blocks
    grid: npt.NDArray[np.bool_] = padded.reshape(rows, v_max, cols, h_max).any(axis=(1, 3))
    return grid


def _replace_blocks(
    jpeg: jpeglib.DCTJPEG,
    edited: npt.NDArray[np.uint8],
    size: tuple[int, int],
    changed: npt.NDArray[np.bool_],
) -> None:
    """Put the edited pixels' blocks in place in every `changed` MCU, a band of MCU rows at a time, each
    within its own changed columns (the float temporaries stay small whatever the edit's size, and a round
    edit is not transformed over its bounding box: 23 against 31 ms at 12 MP with 16-row bands over it)."""
    mcu_h, mcu_w = _mcu_size(jpeg)
    for top in range(0, changed.shape[0], _BAND_MCU_ROWS):
        band_rows = changed[top : top + _BAND_MCU_ROWS]
        cols = np.nonzero(band_rows.any(axis=0))[0]
        if not cols.size:
            continue
        left, right = int(cols[0]), int(cols[-1]) + 1
        band = band_rows[:, left:right]
        pixel_rows = (top * mcu_h, (top + band.shape[0]) * mcu_h)
        region = _edge_padded(edited, size, pixel_rows, (left * mcu_w, right * mcu_w))
        _replace_band(jpeg, region, (top, left), band)


def _replace_band(
    jpeg: jpeglib.DCTJPEG,
    region: npt.NDArray[np.float32],
    first_mcu: tuple[int, int],
    changed: npt.NDArray[np.bool_],
) -> None:
    """Encode the blocks of `region` (whole MCUs from `first_mcu` on) where `changed` holds, and put them in
    place."""
    top, left = first_mcu
    v_max, h_max = (int(value) for value in jpeg.samp_factor.max(axis=0))
    planes = _ycbcr(region) if jpeg.num_components == 3 else [_luma(region)]
    components = [jpeg.Y, jpeg.Cb, jpeg.Cr][: jpeg.num_components]
    for index, (plane, coefficients) in enumerate(zip(planes, components, strict=True)):
        v_samp, h_samp = (int(value) for value in jpeg.samp_factor[index])
        sub = _downsampled(plane, v_max // v_samp, h_max // h_samp)
        mask = np.repeat(np.repeat(changed, v_samp, axis=0), h_samp, axis=1)
        row0, col0 = top * v_samp, left * h_samp
        # The last MCU row or column may hold blocks past the component's edge: those are not stored.
        rows = min(mask.shape[0], coefficients.shape[0] - row0)
        cols = min(mask.shape[1], coefficients.shape[1] - col0)
        keep = np.zeros(mask.shape, bool)
        keep[:rows, :cols] = mask[:rows, :cols]
        table = jpeg.qt[int(jpeg.quant_tbl_no[index])]
        blocks = _quantized_dct(_blocks(sub)[keep], table)
        coefficients[row0 : row0 + rows, col0 : col0 + cols][keep[:rows, :cols]] = blocks


def _blocks(plane: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The plane's 8x8 blocks as rows x cols x 64 (a view's copy, row-major within each block)."""
    height, width = plane.shape
    grid = plane.reshape(height // _BLOCK, _BLOCK, width // _BLOCK, _BLOCK).swapaxes(1, 2)
    return grid.reshape(height // _BLOCK, width // _BLOCK, _BLOCK * _BLOCK)


def _edge_padded(
    pixels: npt.NDArray[np.uint8], size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """pixels[rows, cols], past the image's edge filled with its last row and column (as encoders pad).

    Sliced, not gathered by index arrays: `pixels` is often a turned view of the upright image, and a
    gather through it cost 4x a strided copy."""
    height, width = size
    region = pixels[rows[0] : min(rows[1], height), cols[0] : min(cols[1], width)].astype(np.float32)
    past = ((0, rows[1] - min(rows[1], height)), (0, cols[1] - min(cols[1], width)))
    if past[0][1] or past[1][1]:
        region = np.pad(region, past + ((0, 0),) * (region.ndim - 2), mode="edge")
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
    """Box-averaged by the sampling ratio (libjpeg's own downsampling): the strided samples added up, 5x
    faster than a mean over a reshaped view."""
    if down_v == down_h == 1:
        return plane
    total = np.zeros((plane.shape[0] // down_v, plane.shape[1] // down_h), np.float32)
    for row in range(down_v):
        for col in range(down_h):
            total += plane[row::down_v, col::down_h]
    total *= np.float32(1.0 / (down_v * down_h))
    return total


def _quantized_dct(blocks: npt.NDArray[np.float32], table: npt.NDArray[np.int_]) -> npt.NDArray[np.int16]:
    """Blocks (n x 64, row-major pixels) level-shifted, transformed and quantized by `table`: n x 8 x 8
    coefficients in natural order. One n x 64 by 64 x 64 product (the 2-D DCT as a Kronecker product, the
    quantization folded in): 10x faster than 8x8 products block by block.

    A step of 0 (outside the standard, decoded by libjpeg as a frequency that counts nothing) gives 0: a
    division by it made infinities and NaN cast to int16."""
    steps = table.reshape(1, -1).astype(np.float32)
    transform = np.divide(_DCT_2D, steps, out=np.zeros_like(_DCT_2D), where=steps > 0)
    quantized: npt.NDArray[np.int16] = np.rint((blocks - 128.0) @ transform).astype(np.int16)
    return quantized.reshape(-1, _BLOCK, _BLOCK)
