"""The model's context: only the part of the photo the model denoises travels to Triton and back, and no more
of its pixels than the model uses.

The model crops every request to its mask's surroundings (`fluxfill.inpaint.geometry.CropGeometry.plan`) and
leaves every other pixel as it came. The bridge plans that same crop, with the same code and the model's own
parameters read from Triton (flux_fill_stream's config.pbtxt, the one source of truth), sends the crop alone,
and pastes the answer back: the result is the one the whole photo would have given (the model's plan of the
crop is the crop itself: tests/unit/bridge/test_context.py), while a 12 MP photo no longer crosses the
network twice (36 MB each way) for a mask's few hundred kilopixels.

A crop at least twice the model's working size on each side is sent reduced (`reduce_context`): the model
would shrink it to its working size anyway, so it is box-averaged by the largest whole factor (at most 8)
that keeps it at least that size, in the stored grid whose rows are contiguous, and its mask reduced so that
every repainted pixel stays repainted. The model's answer is then composited here, at full resolution, with
the model's own feather: scaled back up (bicubic) over the mask's feathered surroundings only, every pixel
farther than the feather from the mask kept as it was. A 30 % mask of a 12 MP photo sends ~1.3 MP instead of
9-12 (the shipped 1 MP working size), and the model's resizes (the full-resolution crop to its working size
and back) and composite, which on a GPU host run in the model's instance between GPU work, become those of
the reduced crop.

Why box-averaged here rather than the JPEG decoder's own reduced decoding (DCT scaling): the composite needs
the full-resolution pixels around the mask, so the photo is decoded whole once anyway, and a DCT-scaled decode
costs most of a full one (entropy decoding dominates: 33 against 43 ms for a 12 MP photo at 1/2,
bench/intake.py), while reducing the crop takes ~10 ms.

Without the parameters (an older model, a failed read) the whole photo is sent, as it always was.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from fluxfill.bridge import orientation
from fluxfill.bridge.errors import TritonAnswerError
from fluxfill.inpaint.contract import MASK_THRESHOLD
from fluxfill.inpaint.feather import blend, copy_pixels, feather_band
from fluxfill.inpaint.geometry import Box, CropGeometry, expand_box, mask_bounding_box

__all__ = [
    "Context",
    "CropGeometry",
    "Edit",
    "context_box",
    "cut",
    "edited",
    "pasted",
    "plan_context",
    "sent",
]

Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Context:
    """What the model is sent of a photo: the part it denoises (None: the whole photo), each side divided
    by `reduction` (1: at full resolution); `feather`: the model's feather band, for the composite made here
    when the context is reduced."""

    box: Box | None
    reduction: int = 1
    feather: int = 0


WHOLE_PHOTO = Context(None)
# The largest reduction: beyond it the crop sent is already a sixty-fourth of the crop, and a reduced mask
# stays exact (a block's mean of one 255 among 64 bytes rounds to 4, not 0: see `sent`).
MAX_REDUCTION = 8


def plan_context(mask: Pixels, geometry: CropGeometry | None, *, reduce: bool = True) -> Context:
    """The context to send for this mask: the model's crop, reduced when `reduce` and the crop is at least
    twice the model's working size on each side; the whole photo at full resolution without the model's
    parameters or for an empty mask (which the model answers unchanged)."""
    if geometry is None:
        return WHOLE_PHOTO
    plan = geometry.plan(mask >= MASK_THRESHOLD)
    if plan is None:
        return WHOLE_PHOTO
    height, width = mask.shape
    box = None if plan.box == Box(0, 0, width, height) else plan.box
    fits = min(plan.box.width // plan.working_width, plan.box.height // plan.working_height)
    reduction = min(fits, MAX_REDUCTION)
    if not reduce or reduction < 2:
        return Context(box)
    return Context(box, reduction, geometry.feather_pixels)


def context_box(mask: Pixels, geometry: CropGeometry | None) -> Box | None:
    """The part of the photo the model will denoise for this mask; None: send the whole photo (no
    geometry, or an empty mask, which the model answers unchanged)."""
    return plan_context(mask, geometry, reduce=False).box


def sent(photo: Pixels, mask: Pixels, context: Context, turn: int = 1) -> tuple[Pixels, Pixels]:
    """The photo and mask the model is sent for `context`: cut out, then reduced (the photo box-averaged,
    the mask repainting every reduced pixel that holds a repainted one). `turn`: the EXIF orientation of the
    stored grid `photo` may be a view of (orientation.upright_view)."""
    if context.reduction == 1:
        return cut(photo, mask, context.box)
    factor, box = context.reduction, _whole(photo, context.box)
    # Reduced in the stored grid, whose rows are contiguous (a turned 12 MP crop took 35-45 ms to copy
    # upright), and turned when small; so the blocks start at the stored grid's corner (`_block_offsets`).
    layout = _layout_turn(photo, turn)
    image = orientation.contiguous(
        orientation.upright_view(
            _box_averaged(orientation.to_stored(photo[box.slices()], layout), factor), layout
        )
    )
    # The mask, upright, as 0 or 255 box-averaged in the same blocks (a partial first block padded with
    # nothing to repaint, the last one averaged over what it holds: Pillow rounds the reduced size up): a
    # reduced pixel over any repainted one is repainted, as a block's mean is then at least
    # 255 / MAX_REDUCTION ** 2, which rounds to 4.
    off_y, off_x = _block_offsets(box, factor, layout)
    repaint = np.zeros((box.height + off_y, box.width + off_x), np.uint8)
    np.copyto(repaint[off_y:, off_x:], np.uint8(255), where=mask[box.slices()] >= MASK_THRESHOLD)
    blocks = np.asarray(Image.fromarray(repaint).reduce(factor)) > 0
    return image, blocks.astype(np.uint8) * np.uint8(255)


# Stored rows reduced at a time: Pillow holds an RGB image at 4 bytes a pixel, so a whole 12 MP crop took
# 84 MB beside the photo while it was reduced; a band of these rows takes a few.
_BAND_ROWS = 256


def _box_averaged(stored: Pixels, factor: int) -> Pixels:
    """`stored` (rows contiguous) box-averaged by `factor`, a band of rows at a time (Pillow's reduce,
    rounding the size up: the last blocks averaged over what they hold)."""
    height, width = stored.shape[:2]
    out = np.empty((-(-height // factor), -(-width // factor), 3), np.uint8)
    band = max(factor, _BAND_ROWS // factor * factor)
    for top in range(0, height, band):
        rows = np.ascontiguousarray(stored[top : top + band])
        image = Image.frombuffer("RGB", (width, rows.shape[0]), rows, "raw", "RGB", 0, 1)
        out[top // factor : top // factor + -(-rows.shape[0] // factor)] = np.asarray(image.reduce(factor))
    return out


def cut(photo: Pixels, mask: Pixels, box: Box | None) -> tuple[Pixels, Pixels]:
    """The photo and mask within `box` (None: whole), as the contiguous arrays Triton is sent: tritonclient
    serialises a strided view 6x slower than a contiguous copy of it (129 against 7 + 21 ms for 11 MP), and a
    turned view is copied a whole pixel at a time (orientation.contiguous)."""
    rows, cols = _slices(box)
    return orientation.contiguous(photo[rows, cols]), np.ascontiguousarray(mask[rows, cols])


@dataclass(frozen=True)
class Edit:
    """The whole edited photo and what it takes to find what changed: `within`, the only pixels that may
    differ (None: any); `before`, the photo as it was, whole (when `image` is a new array) or only within
    `within` (when the decoded photo was edited in place, so that a job holds one full-size image)."""

    image: Pixels
    within: Box | None
    before: Pixels


def edited(photo: Pixels, mask: Pixels, context: Context, answer: Pixels, turn: int = 1) -> Edit:
    """The edit the model's answer to `sent(photo, mask, context)` makes, written into `photo` itself when
    it may be written (a copy laid out as it is otherwise: `turn`, see `pasted`); TritonAnswerError when the
    answer is not the size that was sent, and then `photo` is as it was."""
    factor, box = context.reduction, _whole(photo, context.box)
    if factor == 1:
        _check_size(answer, photo[box.slices()].shape)
        if context.box is None:
            return Edit(answer, None, photo)
        return _written(photo, box, turn, lambda target, _: copy_pixels(target, answer))
    _check_size(answer, (-(-box.height // factor), -(-box.width // factor), 3))
    repaint = mask[box.slices()] >= MASK_THRESHOLD
    bounds = mask_bounding_box(repaint)
    assert bounds is not None  # a reduced context is planned around repainted pixels
    # The feathered surroundings of the mask, within the box (its margin covers the feather band).
    near = expand_box(bounds, context.feather, box.width, box.height)
    inside = repaint[near.slices()]
    band = feather_band(inside, context.feather)
    # The answer's pixel i covers the box's pixels [i * factor - offset, (i + 1) * factor - offset) (the
    # first block partial when the stored grid starts at the box's other end): scaled up over `near`.
    off_y, off_x = _block_offsets(box, factor, _layout_turn(photo, turn))
    source = (
        (near.left + off_x) / factor,
        (near.top + off_y) / factor,
        (near.right + off_x) / factor,
        (near.bottom + off_y) / factor,
    )
    size = (near.width, near.height)
    upscaled = np.asarray(Image.fromarray(answer).resize(size, Image.Resampling.BICUBIC, box=source))
    within = Box(box.left + near.left, box.top + near.top, box.left + near.right, box.top + near.bottom)

    def composite(target: Pixels, before: Pixels) -> None:
        copy_pixels(target, upscaled, inside)
        blend(target, before, upscaled, band)

    return _written(photo, within, turn, composite)


def _written(photo: Pixels, within: Box, turn: int, write: Callable[[Pixels, Pixels], None]) -> Edit:
    """`write(target, before)` over `within`: into `photo` itself, its pixels there kept as they were, when
    it may be written (a decoded photo); else into a copy of it (an image Pillow holds read-only)."""
    rows, cols = within.slices()
    if not photo.flags.writeable:
        image = orientation.copy_upright(photo, turn)
        write(image[rows, cols], photo[rows, cols])
        return Edit(image, within, photo)
    before = orientation.contiguous_copy(photo[rows, cols])
    write(photo[rows, cols], before)
    return Edit(photo, within, before)


def pasted(photo: Pixels, box: Box | None, answer: Pixels, turn: int = 1) -> Pixels:
    """The whole edited photo: the model's answer for `box` (None: for the whole photo) in place in a copy
    of `photo`, laid out as `photo` is (`turn`: the EXIF orientation of the stored grid it may be a view of,
    orientation.copy_upright); TritonAnswerError when the answer is not the size that was sent."""
    rows, cols = _slices(box)
    _check_size(answer, photo[rows, cols].shape)
    if box is None:
        return answer
    result = orientation.copy_upright(photo, turn)
    result[rows, cols] = answer
    return result


def _check_size(answer: Pixels, expected: tuple[int, ...]) -> None:
    if answer.shape != expected:
        raise TritonAnswerError(
            f"the model answered an image of shape {list(answer.shape)} for one of {list(expected)}"
        )


def _whole(photo: Pixels, box: Box | None) -> Box:
    return box or Box(0, 0, photo.shape[1], photo.shape[0])


def _layout_turn(photo: Pixels, turn: int) -> int:
    """The turn from the grid `photo`'s memory is laid out in: `turn` for a view of a stored grid, 1 for
    pixels held upright (Pillow's turned copies)."""
    return turn if turn != 1 and orientation.stored_layout(photo, turn) is not None else 1


def _block_offsets(box: Box, factor: int, layout: int) -> tuple[int, int]:
    """How many pixels short of a whole block the box's first reduced row and column are (rows, columns):
    the blocks start at the stored grid's corner, which a turned photo holds at the box's far end."""
    rows_from_end, cols_from_end = orientation.stored_origin_at_end(layout)
    return (-box.height % factor if rows_from_end else 0, -box.width % factor if cols_from_end else 0)


def _slices(box: Box | None) -> tuple[slice, slice]:
    return box.slices() if box is not None else (slice(None), slice(None))
