"""The colour profile a photo's pixels are shown by, for a picture made of them.

A picture without a profile is shown as sRGB by every viewer, and a phone's photo is often not sRGB (an
iPhone's Display P3, carried as an ICC profile or, in some HEICs and AVIFs, as nclx code points alone). A
picture made of the photo's pixels (the bridge's result and preview, `fluxfill infer`'s output) carries the
profile that shows them as the photo is shown, or its colours shift: P3's saturated red shown as sRGB's is
duller, a linear PNG's greys darker. Numpy and PIL only, so the client may import it.
"""

from PIL import Image, PngImagePlugin

from fluxfill.bridge import png_colour
from fluxfill.bridge.colour_profile import ColourDescription, nclx_in, profile_for

# The largest profile a JPEG can carry (255 APP2 segments of 65,519 bytes), a PNG may carry too: Pillow
# refuses any PNG chunk that inflates beyond 1 MB (its guard against text bombs), and so refused the whole
# photo of a profile with lookup tables, or of an editor's compressed XMP. Text chunks stay within Pillow's
# 64 MB in all (MAX_TEXT_MEMORY).
LARGEST_PROFILE_BYTES = 255 * 65_519
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, LARGEST_PROFILE_BYTES)
# Formats whose colours may be described by nclx code points alone (ISO/IEC 23091-2).
CODE_POINT_FORMATS = frozenset({"HEIF", "AVIF"})


def embedded_or_coded(stored: Image.Image, kind: str, data: bytes) -> tuple[bytes | None, str]:
    """The photo's own ICC profile, else for a HEIC or AVIF the one its nclx code points mean, and the note
    that says so (or why none is carried). `stored`: the decoded file, `kind`: its format, `data`: its bytes.
    A CMYK photo's profile describes ink, not the RGB pixels made of it: none."""
    profile = None if stored.mode == "CMYK" else stored.info.get("icc_profile") or None
    if profile is None and kind in CODE_POINT_FORMATS:
        return _profile_of_code_points(stored, data)
    return profile, ""


def rgb_profile(stored: Image.Image, kind: str, data: bytes) -> bytes | None:
    """The ICC profile an RGB picture of this photo's pixels is shown by as the photo is: its own or its code
    points' (embedded_or_coded), else the one a PNG's gAMA and cHRM mean (fluxfill.bridge.png_colour); None
    for sRGB, and for a profile of other pixels than RGB (a greyscale photo's)."""
    profile, _ = embedded_or_coded(stored, kind, data)
    if profile is None and kind == "PNG":
        profile = png_colour.gamma_profile(png_colour.colour_chunks(data))
    return profile if profile is not None and profile_describes(profile, "RGB") else None


def grey_profile(stored: Image.Image) -> bytes | None:
    """A greyscale photo's own ICC profile, when it is one of grey pixels (a greyscale picture of it is shown
    by it as the photo is); None otherwise."""
    profile = stored.info.get("icc_profile") or None
    return profile if profile is not None and profile_describes(profile, "L") else None


def profile_describes(icc_profile: bytes, mode: str) -> bool:
    """Whether an ICC profile's data colour space (its header's bytes 16-19) is that of an image of this
    Pillow mode: GRAY for L and LA, RGB for the others (RGB, RGBA)."""
    return icc_profile[16:20] == (b"GRAY" if mode in ("L", "LA") else b"RGB ")


def save_options(exif: bytes | None, icc_profile: bytes | None, mode: str) -> dict[str, bytes]:
    """Pillow's save options carrying the EXIF, and the colour profile when it describes an image of `mode`
    (a grey profile does not describe an RGB image, nor an RGB one a greyscale image)."""
    if icc_profile is not None and not profile_describes(icc_profile, mode):
        icc_profile = None
    return {
        name: value for name, value in (("exif", exif), ("icc_profile", icc_profile)) if value is not None
    }


def _profile_of_code_points(stored: Image.Image, data: bytes) -> tuple[bytes | None, str]:
    """For a HEIC or AVIF without an ICC profile: the profile its nclx colour box means
    (fluxfill.bridge.colour_profile), and the note that says so or why there is none."""
    nclx = stored.info.get("nclx_profile")  # libheif's reading of a HEIC's; Pillow's AVIF reader has none
    description = (
        ColourDescription(int(nclx.get("color_primaries", 2)), int(nclx.get("transfer_characteristics", 2)))
        if isinstance(nclx, dict)
        else nclx_in(data)
    )
    if description is None:
        return None, ""
    profile, said = profile_for(description)
    if profile is None:
        return None, said
    return profile, f"its colours are {said}, described by code points only: the result carries that profile"
