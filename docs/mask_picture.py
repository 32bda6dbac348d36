"""Draw docs/masks.png: each way of giving a mask, and what fluxfill repaints for it (by our own code).

Run `python docs/mask_picture.py` after changing how masks are read; tests/unit/client/test_mask_picture.py
fails when the committed picture differs from what this draws.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fluxfill.client.images import mask_from_image, selection_warning, uses_alpha

DOCS = Path(__file__).resolve().parent
PHOTO = DOCS.parent / "demo" / "chelsea.png"
PICTURE = DOCS / "masks.png"
SIDE = 160
LABEL_HEIGHT = 34


def _examples(photo: Image.Image) -> list[tuple[str, Image.Image]]:
    width, height = photo.size
    box = (width // 3, height // 4, 2 * width // 3, 3 * height // 4)
    white = Image.new("L", photo.size, 0)
    ImageDraw.Draw(white).ellipse(box, fill=255)
    erased = photo.convert("RGBA")
    hole = Image.new("L", photo.size, 255)
    ImageDraw.Draw(hole).ellipse(box, fill=0)
    erased.putalpha(hole)
    red = Image.new("RGB", photo.size, (0, 0, 0))
    ImageDraw.Draw(red).ellipse(box, fill=(255, 0, 0))
    strokes = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    ImageDraw.Draw(strokes).ellipse(box, fill=(255, 255, 255, 255))
    return [
        ("white on black", white),
        ("RGBA, erased", erased),
        ("red on black", red),
        ("strokes on clear", strokes),
    ]


def _checkerboard(size: tuple[int, int]) -> Image.Image:
    rows, columns = np.indices((size[1], size[0]))
    cells = (rows // 8 + columns // 8) % 2
    return Image.fromarray(np.where(cells, 200, 255).astype(np.uint8)).convert("RGB")


def _shown(mask: Image.Image) -> Image.Image:
    if mask.mode == "RGBA":
        board = _checkerboard(mask.size)
        board.paste(mask, mask=mask.getchannel("A"))
        return board
    return mask.convert("RGB")


def _repainted(photo: Image.Image, mask: Image.Image) -> Image.Image:
    selected = mask_from_image(mask) >= 128
    pixels = np.asarray(photo, dtype=np.float32)
    pixels[selected] = pixels[selected] * 0.35 + np.array([255, 0, 0]) * 0.65
    return Image.fromarray(pixels.astype(np.uint8))


def draw() -> Image.Image:
    """Top row: the mask as given; bottom row: the photo with what is repainted in red, and the verdict."""
    photo = Image.open(PHOTO).convert("RGB").resize((SIDE, SIDE * 3 // 4))
    examples = _examples(photo)
    cell_width, cell_height = SIDE + 8, photo.height + LABEL_HEIGHT
    canvas = Image.new("RGB", (cell_width * len(examples), 2 * cell_height), "white")
    pen = ImageDraw.Draw(canvas)
    for column, (title, mask) in enumerate(examples):
        left = column * cell_width + 4
        canvas.paste(_shown(mask), (left, 0))
        pen.text((left, photo.height + 4), title, fill="black")
        canvas.paste(_repainted(photo, mask), (left, cell_height))
        selected = mask_from_image(mask)
        warning = selection_warning(selected, uses_alpha(mask))
        share = np.count_nonzero(selected >= 128) / selected.size
        verdict = f"repaints {share:.0%}" + (" - WARNED" if warning else "")
        pen.text((left, cell_height + photo.height + 4), verdict, fill="red" if warning else "black")
    return canvas


if __name__ == "__main__":
    draw().save(PICTURE, optimize=True)
    sys.stdout.write(f"wrote {PICTURE}\n")
