"""A mask's feathered edge as the pixels and weights a composite blends, and the blend itself.

`geometry.feather_alpha` maps a whole crop to floats, which is what the model's composite reads. A composite
of a 9 MP region at full resolution (the bridge's, fluxfill.bridge.context) needs only the band's few hundred
thousand pixels: `feather_band` finds them on the mask's bits packed eight to a byte (the 8-neighbourhood
growth of `feather_alpha` on an eighth of the bytes: 15 against 80 ms for a 9 MP blob), with the same weights.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
UInt8Array = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.intp]
# Shifts by uint8 amounts keep the packed bytes uint8.
_ONE, _SEVEN = np.uint8(1), np.uint8(7)


@dataclass(frozen=True)
class Band:
    """Pixels outside a mask within its feather, and the weight of the generated image at each, in (0, 1)."""

    rows: IndexArray
    cols: IndexArray
    weights: FloatArray


def distance_weights(feather: int) -> FloatArray:
    """The generated image's weight at each 8-neighbourhood distance from the mask, 0 to feather + 1: 1 on
    the mask, a ramp down to 0 beyond the feather."""
    weights = [1.0 - distance / (feather + 1) for distance in range(feather + 1)]
    return np.array([*weights, 0.0], np.float32)


def feather_band(mask: BoolArray, feather: int) -> Band:
    """The band `geometry.feather_alpha` blends (its weights strictly between 0 and 1), row-major."""
    width = mask.shape[1]
    # Pixel x of a row is bit 7 - x % 8 of byte x // 8; the bits past the last pixel only ever hold pixels
    # that the mask reaches in as many steps as through the image, so they change no distance.
    reached = np.packbits(mask, axis=1)
    steps = [reached]
    for _ in range(feather):
        reached = _grown(reached)
        steps.append(reached)
    outside = reached & ~steps[0]
    byte_rows, byte_cols = np.nonzero(outside)
    bits = np.unpackbits(outside[byte_rows, byte_cols][:, None], axis=1).astype(bool)
    which, bit = np.nonzero(bits)
    rows, cols = byte_rows[which], byte_cols[which] * 8 + bit
    keep = cols < width
    rows, cols, byte_cols, bit = rows[keep], cols[keep], byte_cols[which][keep], bit[keep]
    # Steps that reached each pixel: those from its distance on.
    reached_in = np.zeros(rows.shape, np.intp)
    shift = (7 - bit).astype(np.uint8)
    for grown in steps[1:]:
        reached_in += (grown[rows, byte_cols] >> shift) & 1
    distance = feather + 1 - reached_in
    return Band(rows, cols, distance_weights(feather)[distance])


def _grown(packed: UInt8Array) -> UInt8Array:
    """Packed bits grown by one pixel in the 8-neighbourhood (separable: rows, then columns)."""
    rows = packed.copy()
    rows[1:] |= packed[:-1]
    rows[:-1] |= packed[1:]
    grown = rows.copy()
    grown |= rows >> _ONE  # from the left neighbour within the byte
    grown[:, 1:] |= rows[:, :-1] << _SEVEN  # from the previous byte's last pixel
    grown |= rows << _ONE
    grown[:, :-1] |= rows[:, 1:] >> _SEVEN
    return grown


def copy_pixels(target: UInt8Array, source: UInt8Array, where: BoolArray | bool = True) -> None:
    """target[where] = source[where] (every pixel by default) for height x width x channels arrays, whole
    pixels at a time: a boolean gather of the bytes took 72 ms of an 8 MP composite, this 4, and a turned
    target is written a byte at a time otherwise. `target` may be any view whose channels are adjacent (a
    turned photo)."""
    channels = np.dtype((np.void, target.shape[2]))
    np.copyto(target.view(channels)[..., 0], np.ascontiguousarray(source).view(channels)[..., 0], where=where)


def blend(target: UInt8Array, original: UInt8Array, generated: UInt8Array, band: Band) -> None:
    """Write the band's blend of `generated` over `original` into `target` (all of one height x width)."""
    rows, cols = band.rows, band.cols
    weight = band.weights[:, None]
    mixed = (
        original[rows, cols].astype(np.float32) * (1.0 - weight)
        + generated[rows, cols].astype(np.float32) * weight
    )
    target[rows, cols] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
