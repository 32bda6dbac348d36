"""Crop to the mask, resize once to the working size, and composite back with a feathered edge.

Everything here works on numpy arrays and PIL images only, so it is fast to test at any size.
Pixels farther than `feather` from the mask are never written: they stay bit-identical to the input.
"""

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from fluxfill.inpaint.feather import Band, blend, copy_pixels

BoolArray = npt.NDArray[np.bool_]
UInt8Array = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

# FLUX packs 2x2 latent patches over an 8x VAE: sizes must be multiples of 16.
SIZE_MULTIPLE = 16
# A mask of another size than the photo is scaled to it when the aspect ratios agree this closely (the app
# may upload a mask drawn on a downscaled preview). The bridge and the client apply the same rule.
MASK_ASPECT_TOLERANCE = 0.01


class MaskSizeError(ValueError):
    """The mask cannot be fitted to the photo: its aspect ratio differs by more than the tolerance."""


def fit_mask(mask: UInt8Array, height: int, width: int) -> UInt8Array:
    """The mask at the photo's size: as it is, scaled (nearest) when the aspect ratios agree, else refused."""
    mask_height, mask_width = mask.shape
    if (mask_height, mask_width) == (height, width):
        return mask
    photo_aspect, mask_aspect = width / height, mask_width / mask_height
    if abs(mask_aspect / photo_aspect - 1.0) > MASK_ASPECT_TOLERANCE:
        raise MaskSizeError(
            f"the mask is {mask_width}x{mask_height} but the photo is {width}x{height}: "
            f"their aspect ratios differ by more than {MASK_ASPECT_TOLERANCE:.0%}"
        )
    scaled = Image.fromarray(mask, mode="L").resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(scaled, dtype=np.uint8)


@dataclass(frozen=True)
class Box:
    """A pixel rectangle; right and bottom are exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return self.width * self.height

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices that cut this box out of an array."""
        return slice(self.top, self.bottom), slice(self.left, self.right)


@dataclass(frozen=True)
class CropPlan:
    """Which part of the image is denoised, and at what size."""

    box: Box
    working_width: int
    working_height: int


def mask_bounding_box(mask: BoolArray) -> Box | None:
    """The tightest box around the True pixels, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def expand_box(box: Box, margin: int, width: int, height: int) -> Box:
    """Grow `box` by `margin` on every side, clamped to the image."""
    return Box(
        max(0, box.left - margin),
        max(0, box.top - margin),
        min(width, box.right + margin),
        min(height, box.bottom + margin),
    )


def working_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Scale (width, height) into [min_pixels, max_pixels], keeping the aspect, in multiples of 16."""
    area = width * height
    scale = 1.0
    if area > max_pixels:
        scale = math.sqrt(max_pixels / area)
    elif area < min_pixels:
        scale = math.sqrt(min_pixels / area)
    target_w = _round_to_multiple(width * scale)
    target_h = _round_to_multiple(height * scale)
    # Rounding (and the 16-pixel floor of a very thin side) may overshoot the cap: shrink the longer side.
    if target_w * target_h > max_pixels:
        if target_w >= target_h:
            target_w = _floor_to_multiple(max_pixels / target_h)
        else:
            target_h = _floor_to_multiple(max_pixels / target_w)
    return target_w, target_h


def _round_to_multiple(value: float) -> int:
    return max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def _floor_to_multiple(value: float) -> int:
    return max(SIZE_MULTIPLE, math.floor(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def plan_crop(
    mask: BoolArray,
    *,
    crop_to_mask: bool,
    margin_fraction: float,
    feather: int,
    min_pixels: int,
    max_pixels: int,
    buckets: tuple[tuple[int, int], ...] = (),
) -> CropPlan | None:
    """Choose the region to denoise and its working size; None when the mask is empty.

    With `buckets`, the working size is one of them (so compiled graphs are reused) and the crop grows
    towards the bucket's aspect, so the resize stays (nearly) uniform.
    """
    height, width = mask.shape
    bbox = mask_bounding_box(mask)
    if bbox is None:
        return None
    if crop_to_mask:
        # The margin always covers the feather band so the blend never reaches the crop's edge.
        margin = max(math.ceil(margin_fraction * max(bbox.width, bbox.height)), feather + 1)
        box = expand_box(bbox, margin, width, height)
    else:
        box = Box(0, 0, width, height)
    working_w, working_h = working_size(box.width, box.height, min_pixels, max_pixels)
    if buckets:
        working_w, working_h = choose_bucket(box.width, box.height, working_w * working_h, buckets)
        if crop_to_mask:
            box = fit_box_to_aspect(box, working_w / working_h, width, height)
    return CropPlan(box, working_w, working_h)


def _dilate_once(mask: BoolArray) -> BoolArray:
    """Grow a mask by one pixel in the 8-neighbourhood (separable 3x3 max)."""
    grown = mask.copy()
    grown[1:, :] |= mask[:-1, :]
    grown[:-1, :] |= mask[1:, :]
    rows = grown.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    return grown


def feather_alpha(mask: BoolArray, feather: int) -> FloatArray:
    """Blend weight of the generated image: 1 on the mask, a ramp down to 0 over `feather` pixels."""
    alpha = mask.astype(np.float32)
    reached = mask
    for distance in range(1, feather + 1):
        grown = _dilate_once(reached)
        alpha[grown & ~reached] = 1.0 - distance / (feather + 1)
        reached = grown
    return alpha


def resize_rgb(image: UInt8Array, width: int, height: int) -> UInt8Array:
    """Resize an RGB array with a high-quality filter (Lanczos), once."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    # A strided view (a crop) makes PIL copy it slowly; hand it one contiguous buffer.
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def resize_mask(mask: BoolArray, width: int, height: int) -> BoolArray:
    """Resize a mask so that every working pixel touching the mask is repainted."""
    if mask.shape[1] == width and mask.shape[0] == height:
        return mask
    as_image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = as_image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized) > 0


def composite(original: UInt8Array, generated: UInt8Array, alpha: FloatArray) -> UInt8Array:
    """Blend `generated` over `original`; where alpha is 0 the original bytes are kept exactly."""
    output = original.copy()
    inside = alpha >= 1.0
    copy_pixels(output, generated, inside)
    # Only the feather band needs arithmetic: a 12 MP crop blended whole in float costs about a second.
    rows, cols = np.nonzero((alpha > 0.0) & ~inside)
    blend(output, original, generated, Band(rows, cols, alpha[rows, cols]))
    return output


@dataclass(frozen=True)
class CropGeometry:
    """The model's parameters that decide what it denoises; the bridge plans the same crop with them, to send
    the model only that part of the photo (fluxfill.bridge.context)."""

    crop_to_mask: bool
    crop_margin: float
    feather_pixels: int
    min_working_pixels: int
    max_working_pixels: int
    resolution_buckets: tuple[tuple[int, int], ...] = ()

    def plan(self, mask: BoolArray) -> CropPlan | None:
        """`plan_crop` with these parameters."""
        return plan_crop(
            mask,
            crop_to_mask=self.crop_to_mask,
            margin_fraction=self.crop_margin,
            feather=self.feather_pixels,
            min_pixels=self.min_working_pixels,
            max_pixels=self.max_working_pixels,
            buckets=self.resolution_buckets,
        )


def parse_buckets(text: str) -> tuple[tuple[int, int], ...]:
    """Parse "1024x1024,1152x896" into sizes; raises ValueError naming the bad entry."""
    buckets = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        width, sep, height = entry.partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise ValueError(f"{entry!r} is not WIDTHxHEIGHT")
        if int(width) % SIZE_MULTIPLE or int(height) % SIZE_MULTIPLE or not int(width) or not int(height):
            raise ValueError(f"{entry!r}: both sides must be positive multiples of {SIZE_MULTIPLE}")
        buckets.append((int(width), int(height)))
    return tuple(buckets)


def choose_bucket(
    width: int, height: int, target_pixels: int, buckets: tuple[tuple[int, int], ...]
) -> tuple[int, int]:
    """The bucket closest in aspect, then in area, to a crop that would be denoised at `target_pixels`."""

    def distance(bucket: tuple[int, int]) -> tuple[float, float]:
        aspect_error = abs(math.log((bucket[0] / bucket[1]) / (width / height)))
        area_error = abs(math.log(bucket[0] * bucket[1] / target_pixels))
        # Aspect dominates (distortion shows); area only separates buckets of one shape at several scales.
        return round(aspect_error, 2), area_error

    return min(buckets, key=distance)


def fit_box_to_aspect(box: Box, aspect: float, width: int, height: int) -> Box:
    """Grow the box's shorter dimension (centred, within the image) towards width/height == aspect."""
    grow_w = max(0, round(box.height * aspect) - box.width)
    grow_h = max(0, round(box.width / aspect) - box.height)
    left = max(0, box.left - grow_w // 2)
    right = min(width, left + box.width + grow_w)
    left = max(0, right - box.width - grow_w)
    top = max(0, box.top - grow_h // 2)
    bottom = min(height, top + box.height + grow_h)
    top = max(0, bottom - box.height - grow_h)
    return Box(left, top, right, bottom)
