"""A phone's JPEG decoded by libjpeg-turbo straight into the model's RGB array, viewed upright.

Why not Pillow for these: Pillow decodes into its own four-byte pixels and packs them into an RGB array after
(a 12 MP photo: 69 + 50 ms, and 45 ms more for the EXIF turn); simplejpeg decodes into the RGB array itself
(42 ms, the same libjpeg-turbo with the same settings: the same pixels, tested), and the array is turned
upright as a view (a copy took 34 ms more; what needs it turned turns only its part). Only what phones write
comes this way, three 8-bit components (YCbCr, or RGB); a JPEG that libjpeg-turbo finds anything wrong with,
even what it would only warn about, is left to Pillow, so a broken photo is refused, or tolerated, exactly as
before.
"""

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image

from fluxfill.bridge import orientation


def decode_upright(data: bytes, header: Image.Image, turn: int) -> npt.NDArray[np.uint8] | None:
    """The upright pixels (height x width x 3) of the JPEG `data`, whose header Pillow has read, turned by
    EXIF orientation `turn` (a view of the stored grid: orientation.upright_view); None when it is not three
    components or libjpeg-turbo objects to it."""
    if header.mode != "RGB":  # grey, CMYK: Pillow converts them
        return None
    try:
        stored: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None  # corrupt, cut short, or merely odd: Pillow decides, as it always has
    return orientation.upright_view(stored, turn)
