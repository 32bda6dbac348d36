"""The ICC profile a HEIC or AVIF photo's nclx colour description means, for the results that carry profiles
(and the one a PNG's gAMA and cHRM mean, for its JPEG preview: fluxfill.bridge.png_colour).

Phones describe a HEIC's or AVIF's colours by an ICC profile (iPhones: Display P3, carried as it is) or by
code points alone (ISO/IEC 23091-2 in an `nclx` colour box: colour primaries, transfer characteristics), as
some Android phones write Display P3. Pixels decoded from the latter are P3 values; a JPEG result or preview
without a profile is read as sRGB by every viewer, so its colours would shift (P3's red shown as sRGB's).
The bridge writes the profile those codes mean: an ICC version 4 display profile of the primaries (their
chromaticities, D65 white, adapted to the profile connection space's D50 by Bradford, as `chad` records) and
the sRGB curve as a parametric curve. sRGB itself needs none (the default everywhere); transfers it cannot
write as a curve (PQ, HLG: HDR) and primaries it does not know get none, and the result's note says so.
"""

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Chromaticity = tuple[float, float]
Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Primaries:
    name: str
    red: Chromaticity
    green: Chromaticity
    blue: Chromaticity
    white: Chromaticity = (0.3127, 0.3290)  # D65


# Colour primaries code points (ISO/IEC 23091-2, table 2) a photo may carry: BT.709 is sRGB's.
SRGB_PRIMARIES = frozenset({1, 2})  # BT.709, and unspecified (read as sRGB by everyone)
BT709 = Primaries("sRGB", (0.640, 0.330), (0.300, 0.600), (0.150, 0.060))
KNOWN_PRIMARIES = {
    9: Primaries("BT.2020", (0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),
    12: Primaries("Display P3", (0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
}
# Transfer characteristics written as the sRGB curve: sRGB (13) and unspecified (2).
SRGB_TRANSFERS = frozenset({2, 13})
_D50 = np.array([0.9642, 1.0, 0.8249])
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
# The sRGB curve as ICC parametric curve type 3: Y = (aX + b)^g for X >= d, else cX.
_SRGB_CURVE = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)


@dataclass(frozen=True)
class ColourDescription:
    """What an nclx box says, in code points."""

    primaries: int
    transfer: int


def profile_for(description: ColourDescription) -> tuple[bytes | None, str]:
    """The ICC profile for these code points (None: sRGB, which needs none, or none can be written), and
    what to tell of it: the colour space's name, or why the photo's colours are left undescribed."""
    if description.primaries in SRGB_PRIMARIES:
        return None, ""
    primaries = KNOWN_PRIMARIES.get(description.primaries)
    if primaries is None:
        return (
            None,
            f"its colours are described only by colour primaries {description.primaries}, not known here",
        )
    if description.transfer not in SRGB_TRANSFERS:
        return None, (
            f"its colours are {primaries.name} with transfer characteristics {description.transfer} (HDR or "
            "video), which no ICC curve here describes"
        )
    return display_profile(primaries), primaries.name


def nclx_in(data: bytes, search_bytes: int = 65_536) -> ColourDescription | None:
    """What the nclx colour boxes in an ISO BMFF file's leading bytes (where its `meta` box is) say, when
    they all say the same; None when there is none, or when they differ (a gain map's or another item's box
    beside the primary image's: which is whose takes the item associations, not read here, and a profile
    from the wrong one would shift the colours it should keep)."""
    found = set()
    at = data.find(b"colrnclx", 0, search_bytes)
    while at >= 0:
        if at + 12 > len(data):
            return None
        found.add(ColourDescription(*struct.unpack_from(">HH", data, at + 8)))
        at = data.find(b"colrnclx", at + 8, search_bytes)
    return found.pop() if len(found) == 1 else None


def display_profile(primaries: Primaries, gamma: float | None = None) -> bytes:
    """An ICC v4 RGB display profile: these primaries and white, the sRGB curve or, given `gamma`, the pure
    power curve of that exponent (a PNG's gAMA). Raises numpy.linalg.LinAlgError for primaries that span no
    colour space."""
    adapt = _bradford(_xyz(primaries.white), _D50)
    colorants = adapt @ _rgb_to_xyz(primaries)
    curve = _para(_SRGB_CURVE, function=3) if gamma is None else _para((gamma,), function=0)
    name = primaries.name if gamma is None else f"{primaries.name}, gamma {gamma:.3g}"
    tags = [
        (b"desc", _mluc(name)),
        (b"cprt", _mluc("No copyright, use freely")),
        (b"wtpt", _xyz_type(_D50)),
        (b"chad", _sf32(adapt)),
        (b"rXYZ", _xyz_type(colorants[:, 0])),
        (b"gXYZ", _xyz_type(colorants[:, 1])),
        (b"bXYZ", _xyz_type(colorants[:, 2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    table_end = 128 + 4 + 12 * len(tags)
    entries, blobs, offset = [], b"", table_end
    for signature, blob in tags:
        entries.append(struct.pack(">4sII", signature, offset, len(blob)))
        padded = blob + b"\0" * (-len(blob) % 4)
        blobs += padded
        offset += len(padded)
    body = struct.pack(">I", len(tags)) + b"".join(entries) + blobs
    return _header(128 + len(body)) + body


def _header(size: int) -> bytes:
    header = struct.pack(
        ">I4sI4s4s4s6H4s4sI4s4sQI",
        size,
        b"\0\0\0\0",  # preferred CMM: none
        0x04300000,  # version 4.3
        b"mntr",
        b"RGB ",
        b"XYZ ",
        2026,
        1,
        1,
        0,
        0,
        0,  # created
        b"acsp",
        b"\0\0\0\0",  # platform
        0,  # flags
        b"\0\0\0\0",  # manufacturer
        b"\0\0\0\0",  # model
        0,  # attributes
        0,  # rendering intent: perceptual
    )
    header += _s15(_D50) + b"\0" * 4  # illuminant, creator
    return header + b"\0" * (128 - len(header))  # profile ID (not computed: optional) and reserved


def _xyz(chromaticity: Chromaticity) -> Matrix:
    x, y = chromaticity
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _rgb_to_xyz(primaries: Primaries) -> Matrix:
    """Linear RGB to XYZ under the primaries' own white: the primaries scaled so that white is (1, 1, 1)."""
    columns = np.stack([_xyz(primaries.red), _xyz(primaries.green), _xyz(primaries.blue)], axis=1)
    scale = np.linalg.solve(columns, _xyz(primaries.white))
    matrix: Matrix = columns * scale
    return matrix


def _bradford(source: Matrix, target: Matrix) -> Matrix:
    ratio = (_BRADFORD @ target) / (_BRADFORD @ source)
    adapt: Matrix = np.linalg.inv(_BRADFORD) @ np.diag(ratio) @ _BRADFORD
    return adapt


def _s15(values: npt.ArrayLike) -> bytes:
    fixed = np.rint(np.asarray(values, np.float64).ravel() * 65536).astype(">i4")
    return bytes(fixed.tobytes())


def _xyz_type(xyz: npt.ArrayLike) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(xyz)


def _sf32(matrix: Matrix) -> bytes:
    return b"sf32\0\0\0\0" + _s15(matrix)


def _para(parameters: tuple[float, ...], function: int) -> bytes:
    """An ICC parametric curve: function 0 is Y = X^g, 3 the sRGB curve's form (_SRGB_CURVE)."""
    return b"para\0\0\0\0" + struct.pack(">HH", function, 0) + _s15(parameters)


def _mluc(text: str) -> bytes:
    encoded = text.encode("utf-16-be")
    return b"mluc\0\0\0\0" + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(encoded), 28) + encoded
