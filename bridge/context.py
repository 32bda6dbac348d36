"""The model's context: only the part of the photo the model denoises travels to Triton and back.

The model crops every request to its mask's surroundings (`fluxfill.inpaint.geometry.CropGeometry.plan`) and
leaves every other pixel as it came. The bridge plans that same crop, with the same code and the model's own
parameters read from Triton (flux_fill_stream's config.pbtxt, the one source of truth), sends the crop alone,
and pastes the answer back: the result is the one the whole photo would have given (the model's plan of the
crop is the crop itself: tests/unit/bridge/test_context.py), while a 12 MP photo no longer crosses the
network twice (36 MB each way) for a mask's few hundred kilopixels.
Without the parameters (an older model, a failed read) the whole photo is sent, as it always was.
"""

import numpy as np
import numpy.typing as npt

from fluxfill.bridge import orientation
from fluxfill.bridge.errors import RetryableError
from fluxfill.inpaint.contract import MASK_THRESHOLD
from fluxfill.inpaint.geometry import Box, CropGeometry

__all__ = ["CropGeometry", "context_box", "cut", "pasted"]


def context_box(mask: npt.NDArray[np.uint8], geometry: CropGeometry | None) -> Box | None:
    """The part of the photo the model will denoise for this mask; None: send the whole photo (no
    geometry, or an empty mask, which the model answers unchanged)."""
    if geometry is None:
        return None
    plan = geometry.plan(mask >= MASK_THRESHOLD)
    height, width = mask.shape
    if plan is None or plan.box == Box(0, 0, width, height):
        return None
    return plan.box


def cut(
    photo: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], box: Box | None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """The photo and mask within `box` (None: whole), as the contiguous arrays Triton is sent: tritonclient
    serialises a strided view 6x slower than a contiguous copy of it (129 against 7 + 21 ms for 11 MP), and a
    turned view is copied a whole pixel at a time (orientation.contiguous)."""
    rows, cols = _slices(box)
    return orientation.contiguous(photo[rows, cols]), np.ascontiguousarray(mask[rows, cols])


def pasted(
    photo: npt.NDArray[np.uint8], box: Box | None, answer: npt.NDArray[np.uint8], turn: int = 1
) -> npt.NDArray[np.uint8]:
    """The whole edited photo: the model's answer for `box` (None: for the whole photo) in place in a copy
    of `photo`, laid out as `photo` is (`turn`: the EXIF orientation of the stored grid it may be a view of,
    orientation.copy_upright); RetryableError when the answer is not the size that was sent."""
    rows, cols = _slices(box)
    expected = photo[rows, cols].shape
    if answer.shape != expected:
        raise RetryableError(
            f"the model answered an image of shape {list(answer.shape)} for one of {list(expected)}"
        )
    if box is None:
        return answer
    edited = orientation.copy_upright(photo, turn)
    edited[rows, cols] = answer
    return edited


def _slices(box: Box | None) -> tuple[slice, slice]:
    return box.slices() if box is not None else (slice(None), slice(None))
