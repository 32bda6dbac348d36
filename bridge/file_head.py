"""Read a file whole only when its first bytes say it is of a kind worth reading again.

A photo that fails to open is read again as bytes to be mended (its EXIF hidden, its skipped PNG chunks
dropped); a large file of another kind, a video picked by mistake, is not read into memory for nothing.
"""

import contextlib
from collections.abc import Callable
from pathlib import Path

HEAD_SIZE = 64  # enough for a PNG's signature, a JPEG's SOI and an ISO BMFF file's ftyp box with its brands


def bytes_if(path: Path, head_says: Callable[[bytes], bool]) -> bytes:
    """The file's bytes when `head_says` yes to its first HEAD_SIZE bytes, else none (b""), and none when it
    cannot be read."""
    with contextlib.suppress(OSError), path.open("rb") as file:
        head = file.read(HEAD_SIZE)
        if head_says(head):
            return head + file.read()
    return b""
