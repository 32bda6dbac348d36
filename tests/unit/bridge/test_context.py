"""Only the model's context travels to Triton, and the result is the one the whole photo would have given."""

import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fluxfill.bridge import orientation
from fluxfill.bridge.context import (
    Context,
    CropGeometry,
    context_box,
    cut,
    edited,
    pasted,
    plan_context,
    sent,
)
from fluxfill.bridge.errors import RetryableError
from fluxfill.bridge.outcome import OutcomeKind
from fluxfill.bridge.ports import InferenceRequest, InferenceResult
from fluxfill.inpaint.engine import InpaintEngine
from fluxfill.inpaint.geometry import Box, feather_alpha, plan_crop
from fluxfill.inpaint.request import InpaintRequest
from tests.support import make_config
from tests.unit.bridge.fakes import png
from tests.unit.bridge.world import PREFIX, World
from tests.unit.fakes import PaintingDenoiser

SHIPPED = make_config().crop_geometry


def random_case(seed: int) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """Model parameters, a photo and a mask of one or more rectangles, any of them at the photo's edges."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(24, 400)), int(rng.integers(24, 400))
    low, high = sorted(int(value) for value in rng.choice([4096, 16384, 65536], 2))
    parameters = {
        "crop_margin": str(rng.choice(["0", "0.1", "0.3", "1.5"])),
        "feather_pixels": str(rng.integers(0, 12)),
        "min_working_pixels": str(low),
        "max_working_pixels": str(high),
        "crop_to_mask": str(rng.choice(["true", "true", "false"])),
        # Buckets grow the crop towards their aspect: the crop sent must still be the crop the model makes.
        "resolution_buckets": str(rng.choice(["", "128x128,192x128,128x192,256x256,320x192"])),
    }
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        mask[top : top + int(rng.integers(1, height)), left : left + int(rng.integers(1, width))] = 255
    return parameters, image, mask


def inpainted(engine: InpaintEngine, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    request = InpaintRequest(image=image, mask=mask >= 128, prompt="", steps=1, guidance=1.0, seed=3)
    return engine.inpaint(request).image


@pytest.mark.parametrize("seed", range(60))
def test_the_context_alone_gives_the_whole_photos_result(seed: int) -> None:
    parameters, image, mask = random_case(seed)
    config = make_config(**parameters)
    # The fake denoiser inverts what it does not paint, so the blended band shows any change of context.
    engine = InpaintEngine(PaintingDenoiser(), config)
    box = context_box(mask, config.crop_geometry)
    if box is not None:
        rows, cols = box.slices()
        assert box.area < image.shape[0] * image.shape[1]
        answer = inpainted(engine, image[rows, cols], mask[rows, cols])
    else:
        answer = inpainted(engine, image, mask)
    assert np.array_equal(pasted(image, box, answer), inpainted(engine, image, mask))


def test_the_context_is_the_models_own_crop() -> None:
    mask = np.zeros((3000, 4000), np.uint8)
    mask[1000:1300, 2000:2400] = 255
    box = context_box(mask, SHIPPED)
    plan = plan_crop(
        mask >= 128,
        crop_to_mask=True,
        margin_fraction=SHIPPED.crop_margin,
        feather=SHIPPED.feather_pixels,
        min_pixels=SHIPPED.min_working_pixels,
        max_pixels=SHIPPED.max_working_pixels,
    )
    assert plan is not None
    assert box == plan.box
    assert box.area < 0.05 * mask.size  # about 1.6 % of a 12 MP photo travels, not all of it


def test_the_whole_photo_is_sent_without_parameters_an_empty_mask_or_a_full_frame_model() -> None:
    mask = np.zeros((300, 400), np.uint8)
    assert context_box(mask, SHIPPED) is None  # the model answers an empty mask unchanged
    mask[100:120, 100:130] = 255
    assert context_box(mask, None) is None
    assert context_box(mask, replace(SHIPPED, crop_to_mask=False)) is None
    mask[:] = 255
    assert context_box(mask, SHIPPED) is None  # the crop is the whole photo


def test_an_answer_of_another_size_is_refused_and_the_photo_left_alone() -> None:
    image = np.zeros((50, 80, 3), np.uint8)
    box = Box(10, 5, 40, 25)
    with pytest.raises(RetryableError, match=r"shape \[20, 31, 3\] for one of \[20, 30, 3\]"):
        pasted(image, box, np.zeros((20, 31, 3), np.uint8))
    with pytest.raises(RetryableError, match="for one of"):
        pasted(image, None, np.zeros((50, 79, 3), np.uint8))
    answer = np.full((20, 30, 3), 9, np.uint8)
    edited = pasted(image, box, answer)
    assert not image.any(), "the decoded photo is not written to"
    assert np.array_equal(edited[5:25, 10:40], answer)
    assert edited.sum() == answer.sum()


def big_mask(height: int = 3000, width: int = 4000) -> np.ndarray:
    """An ellipse over about a third of the photo: the shipped model's crop is most of it."""
    rows, cols = np.ogrid[:height, :width]
    inside = ((rows - height / 2) / (height * 0.35)) ** 2 + ((cols - width / 2) / (width * 0.33)) ** 2 < 1
    return inside.astype(np.uint8) * 255


def test_a_crop_far_larger_than_the_working_size_is_sent_reduced_to_about_it() -> None:
    mask = big_mask()
    context = plan_context(mask, SHIPPED)
    plan = SHIPPED.plan(mask >= 128)
    assert plan is not None
    assert context.box == (None if plan.box == Box(0, 0, 4000, 3000) else plan.box)
    assert context.reduction >= 2
    assert context.feather == SHIPPED.feather_pixels
    photo = np.zeros((3000, 4000, 3), np.uint8)
    image, region = sent(photo, mask, context)
    height, width = image.shape[:2]
    assert region.shape == (height, width)
    # At least the working size, so the model still shrinks it; the largest whole factor that keeps it so.
    assert width >= plan.working_width
    assert height >= plan.working_height
    assert width < 2 * plan.working_width or height < 2 * plan.working_height
    assert plan_context(mask, SHIPPED, reduce=False) == Context(context.box)


def test_the_reduction_stops_at_eight() -> None:
    mask = big_mask()
    context = plan_context(mask, replace(SHIPPED, min_working_pixels=4096, max_working_pixels=4096))
    assert context.reduction == 8
    image, _ = sent(np.zeros((3000, 4000, 3), np.uint8), mask, context)
    assert image.shape[0] * image.shape[1] > 16 * 4096


def test_a_crop_under_twice_the_working_size_goes_at_full_resolution() -> None:
    mask = np.zeros((3000, 4000), np.uint8)
    mask[1000:1300, 2000:2400] = 255
    context = plan_context(mask, SHIPPED)
    assert context == Context(context_box(mask, SHIPPED))
    assert plan_context(mask, None) == Context(None)
    assert plan_context(np.zeros_like(mask), SHIPPED) == Context(None)


@pytest.mark.parametrize("factor", [2, 3, 5, 8])
def test_the_reduced_mask_repaints_every_block_holding_a_repainted_pixel_and_no_other(factor: int) -> None:
    rng = np.random.default_rng(factor)
    mask = np.where(rng.random((101, 133)) < 0.002, 255, rng.integers(0, 128, (101, 133))).astype(np.uint8)
    photo = rng.integers(0, 256, (101, 133, 3), dtype=np.uint8)
    image, reduced = sent(photo, mask, Context(None, factor, 4))
    rows, cols = -(-101 // factor), -(-133 // factor)
    assert image.shape == (rows, cols, 3)
    assert reduced.shape == (rows, cols)
    padded = np.zeros((rows * factor, cols * factor), bool)
    padded[:101, :133] = mask >= 128
    expected = padded.reshape(rows, factor, cols, factor).any(axis=(1, 3))
    assert np.array_equal(reduced >= 128, expected)
    # The photo box-averaged: a block's mean, rounded.
    block = photo[:factor, :factor].reshape(-1, 3).mean(axis=0)
    assert np.abs(image[0, 0] - block).max() <= 0.5 + 1e-9


def reduced_case(seed: int) -> tuple[np.ndarray, np.ndarray, Context]:
    """A photo, a mask of rectangles (at the edges too) and a reduced context planned for them."""
    rng = np.random.default_rng(seed)
    while True:
        photo, mask, context = _case(rng)
        if context.reduction > 1:
            return photo, mask, context


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Context]:
    height, width = int(rng.integers(60, 300)), int(rng.integers(60, 300))
    photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        mask[top : top + int(rng.integers(1, height)), left : left + int(rng.integers(1, width))] = 255
    geometry = replace(
        SHIPPED,
        feather_pixels=int(rng.integers(0, 10)),
        crop_margin=float(rng.choice([0.0, 0.3, 1.0])),
        crop_to_mask=bool(rng.random() < 0.8),
        min_working_pixels=256,
        max_working_pixels=int(rng.choice([256, 1024, 4096])),
    )
    return photo, mask, plan_context(mask, geometry)


@pytest.mark.parametrize("seed", range(40))
def test_a_reduced_answer_is_composited_at_full_resolution_around_the_mask_only(seed: int) -> None:
    original, mask, context = reduced_case(seed)
    photo = original.copy()
    image, _ = sent(photo, mask, context)
    answer = np.full(image.shape, (250, 5, 120), np.uint8)  # a flat repaint: its upscale is flat too
    edit = edited(photo, mask, context, answer)
    result, within = edit.image, edit.within
    assert result is photo, "the decoded photo is edited in place: a job holds one full-size image"
    photo = original
    alpha = feather_alpha(mask >= 128, context.feather)
    untouched = alpha == 0
    assert np.array_equal(result[untouched], photo[untouched]), "beyond the feather, the photo's own bytes"
    assert (result[alpha == 1] == (250, 5, 120)).all()
    band = (alpha > 0) & (alpha < 1)
    weight = alpha[band][:, None]
    blended = np.rint(photo[band] * (1 - weight) + answer[0, 0].astype(np.float32) * weight)
    assert np.array_equal(result[band], blended.astype(np.uint8)), "the model's feather, at full resolution"
    assert within is not None
    outside = np.ones(mask.shape, bool)
    outside[within.slices()] = False
    assert not (alpha[outside] > 0).any(), "`within` holds every pixel the edit may change"
    assert np.array_equal(edit.before, original[within.slices()]), "what was there before, kept"


class SmoothDenoiser:
    """Generates smooth content (sines over the working grid) in the mask and keeps the rest, as a model's
    output is smooth at its working size."""

    def denoise(self, image: np.ndarray, mask: np.ndarray, **_: Any) -> np.ndarray:
        height, width = mask.shape
        rows, cols = np.mgrid[:height, :width] / max(height, width)
        waves = (100 * np.sin(6 * cols + 1), 100 * np.sin(5 * rows), 80 * np.sin(4 * (cols + rows)))
        generated = 128 + np.stack(waves, axis=-1)
        out = image.copy()
        out[mask] = generated[mask].astype(np.uint8)
        return out


@pytest.mark.parametrize("coverage", [0.2, 0.4])
def test_a_reduced_context_gives_inside_the_mask_what_the_full_resolution_one_gives(coverage: float) -> None:
    """The same generated content, scaled up in two steps (the model's to the reduced crop, the bridge's to
    full resolution) instead of one: within a grey level on average; the feather band is blended at another
    scale, so it differs more; beyond it both are the photo."""
    config = make_config(min_working_pixels="16384", max_working_pixels="65536")
    engine = InpaintEngine(SmoothDenoiser(), config)  # type: ignore[arg-type]
    rows, cols = np.mgrid[:600, :800]
    rng = np.random.default_rng(5)
    waves = np.stack([np.sin(cols / 9.0), np.sin(rows / 7.0), np.sin((rows + cols) / 13.0)], axis=-1)
    photo = np.clip(128 + 60 * waves + rng.normal(0, 12, (600, 800, 3)), 0, 255).astype(np.uint8)
    inside = ((rows - 300) / 300) ** 2 + ((cols - 400) / 400) ** 2 < coverage * 4 / np.pi
    mask = inside.astype(np.uint8) * 255
    full_context = plan_context(mask, config.crop_geometry, reduce=False)
    full = pasted(photo, full_context.box, inpainted(engine, *cut(photo, mask, full_context.box)))
    context = plan_context(mask, config.crop_geometry)
    assert context.reduction >= 2
    reduced = edited(photo.copy(), mask, context, inpainted(engine, *sent(photo, mask, context))).image
    difference = np.abs(full.astype(np.int16) - reduced.astype(np.int16))
    assert difference[inside].mean() < 1.0
    assert np.percentile(difference[inside], 99) <= 3
    alpha = feather_alpha(inside, config.feather_pixels)
    band = (alpha > 0) & (alpha < 1)
    assert difference[band].mean() < 12
    assert not difference[alpha == 0].any()


def test_a_read_only_photo_is_edited_in_a_copy_and_a_full_resolution_context_pasted_in_place() -> None:
    original, mask, context = reduced_case(3)
    image, _ = sent(original, mask, context)
    photo = original.copy()
    photo.flags.writeable = False  # as Pillow's images come
    edit = edited(photo, mask, context, np.zeros_like(image))
    assert edit.image is not photo
    assert edit.before is photo
    assert np.array_equal(photo, original)
    assert not np.array_equal(edit.image, original)
    box = Box(10, 5, 40, 25)
    photo = original.copy()
    answer = np.full((20, 30, 3), 9, np.uint8)
    edit = edited(photo, mask, Context(box), answer)
    assert edit.image is photo
    assert edit.within == box
    assert np.array_equal(edit.before, original[5:25, 10:40])
    assert (photo[5:25, 10:40] == 9).all()
    assert np.array_equal(
        np.delete(np.delete(photo, np.s_[5:25], 0), np.s_[10:40], 1),
        np.delete(np.delete(original, np.s_[5:25], 0), np.s_[10:40], 1),
    )


@pytest.mark.parametrize("turn", range(1, 9))
def test_the_photo_is_reduced_in_blocks_from_its_stored_corner_and_the_answer_scaled_back_onto_them(
    turn: int,
) -> None:
    upright = np.random.default_rng(turn).integers(0, 256, (241, 250, 3), dtype=np.uint8)
    # Held as the JPEG decoder holds it: the stored grid, viewed upright.
    stored = orientation.contiguous(orientation.to_stored(upright, turn))
    photo = orientation.upright_view(stored, turn)
    mask = np.zeros((241, 250), np.uint8)
    mask[20:220, 30:230] = 255
    context = plan_context(mask, replace(SHIPPED, min_working_pixels=1024, max_working_pixels=1024))
    assert context.box is None  # the margin reaches the photo's edges
    factor = context.reduction
    assert factor >= 4
    assert 241 % factor, "a partial block of rows"
    assert 250 % factor, "a partial block of columns"
    image, region = sent(photo, mask, context, turn)
    height, width = image.shape[:2]
    assert (height, width) == (-(-241 // factor), -(-250 // factor))
    # Blocks start at the stored grid's top-left corner: upright, the first row or column of blocks is the
    # partial one when that corner is at the photo's bottom or right.
    at_end = orientation.stored_origin_at_end(turn)
    off_y, off_x = (-241 % factor if at_end[0] else 0), (-250 % factor if at_end[1] else 0)

    def block(row: int, col: int) -> tuple[slice, slice]:
        top, left = max(0, row * factor - off_y), max(0, col * factor - off_x)
        return slice(top, (row + 1) * factor - off_y), slice(left, (col + 1) * factor - off_x)

    for row, col in ((0, 0), (height - 1, width - 1), (0, width - 1), (height // 2, width // 3)):
        mean = upright[block(row, col)].reshape(-1, 3).mean(axis=0)
        assert np.abs(image[row, col] - mean).max() <= 0.5 + 1e-9
        assert region[row, col] == (255 if (mask[block(row, col)] >= 128).any() else 0)
    # Steep ramps across and down the answer: a cubic scaled up reproduces a ramp, so every repainted pixel
    # shows where in the answer it came from, to a fraction of a reduced pixel.
    slope = 255 // max(height, width)
    assert slope >= 6
    answer = np.zeros(image.shape, np.uint8)
    answer[..., 0] = slope * np.arange(width, dtype=np.uint8)[None, :]
    answer[..., 1] = slope * np.arange(height, dtype=np.uint8)[:, None]
    result = edited(photo, mask, context, answer, turn).image
    rows, cols = np.ogrid[20:220, 30:230]
    expected_x = slope * ((cols + 0.5 + off_x) / factor - 0.5)
    expected_y = slope * ((rows + 0.5 + off_y) / factor - 0.5)
    assert np.abs(result[20:220, 30:230, 0] - expected_x).max() <= 1
    assert np.abs(result[20:220, 30:230, 1] - expected_y).max() <= 1
    alpha = feather_alpha(mask >= 128, context.feather)
    assert np.array_equal(result[alpha == 0], upright[alpha == 0])
    if turn != 1:
        assert orientation.stored_layout(result, turn) is not None, "laid out as the photo: a stored grid"


def test_a_reduced_answer_of_another_size_is_refused() -> None:
    photo, mask, context = reduced_case(7)
    image, _ = sent(photo, mask, context)
    with pytest.raises(RetryableError, match="for one of"):
        edited(photo, mask, context, image[:, 1:])


def large_world(**overrides: Any) -> World:
    """A 300x400 photo whose mask covers a 30x40 corner of it: the shipped crop is a small part of it."""
    world = World(**overrides)
    image = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    mask = np.zeros((300, 400), np.uint8)
    mask[240:270, 330:370] = 255
    world.objects.objects[f"{PREFIX}/original.png"] = png(image)
    world.objects.objects[f"{PREFIX}/mask.png"] = png(mask)
    return world


def edited_png(world: World) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(world.objects.objects[f"{PREFIX}/edited.png"])))


def test_a_job_sends_only_the_context_and_stores_the_whole_photos_result() -> None:
    whole = large_world()
    whole.model.geometry = None
    assert whole.deliver(seed=4).kind is OutcomeKind.DONE
    cropped = large_world()
    # The smallest working size, so that the crop is the mask's margin only (a real working size would
    # upscale this small mask's surroundings, and the model would then crop more of the photo).
    cropped.model.geometry = replace(SHIPPED, min_working_pixels=256)
    assert cropped.deliver(seed=4).kind is OutcomeKind.DONE
    (sent,) = cropped.model.calls
    assert sent.image.shape[:2] == sent.mask.shape
    assert sent.image.shape[0] * sent.image.shape[1] < 0.1 * 300 * 400
    assert whole.model.calls[0].image.shape == (300, 400, 3)
    assert np.array_equal(edited_png(cropped), edited_png(whole))
    assert cropped.document["result"]["width"] == 400


@pytest.mark.parametrize("turn", [1, 6, 3])
def test_a_jpeg_job_with_only_the_context_sent_is_spliced_to_the_same_bytes(turn: int) -> None:
    image = np.random.default_rng(9).integers(0, 256, (300, 404, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = turn
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    results = []
    for geometry in (None, replace(SHIPPED, min_working_pixels=256)):
        world = large_world()
        world.objects.objects = {f"{PREFIX}/original.jpg": buffer.getvalue()}
        upright = (404, 300) if turn == 6 else (300, 404)
        mask = np.zeros(upright, np.uint8)
        mask[200:230, 250:290] = 255
        world.objects.objects[f"{PREFIX}/mask.png"] = png(mask)
        world.model.geometry = geometry
        assert world.deliver(seed=4).kind is OutcomeKind.DONE
        assert world.document["result"]["encoding"] == "dct_splice"
        results.append(world.objects.objects[f"{PREFIX}/edited.jpg"])
    assert results[0] == results[1]


def big_mask_world(**overrides: Any) -> tuple[World, np.ndarray, np.ndarray]:
    """A 600x800 photo, most of it masked, and a model working at 64x64: its crop goes reduced."""
    world = World(**overrides)
    image = np.random.default_rng(3).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    mask = big_mask(600, 800)
    world.objects.objects[f"{PREFIX}/original.png"] = png(image)
    world.objects.objects[f"{PREFIX}/mask.png"] = png(mask)
    world.model.geometry = replace(SHIPPED, min_working_pixels=4096, max_working_pixels=4096)
    return world, image, mask


def test_a_job_with_a_large_crop_sends_it_reduced_and_keeps_every_pixel_beyond_the_feather() -> None:
    world, image, mask = big_mask_world()
    assert world.deliver(seed=4).kind is OutcomeKind.DONE
    (request,) = world.model.calls
    context = plan_context(mask, world.model.geometry)
    assert context.box is None  # the crop is the whole photo, sent an eighth of its size
    assert context.reduction == 8
    assert world.document["model"]["contextReduction"] == 8
    assert request.image.shape == (75, 100, 3)
    assert request.mask.shape == (75, 100)
    stored = edited_png(world)
    assert stored.shape == image.shape
    alpha = feather_alpha(mask >= 128, SHIPPED.feather_pixels)
    assert np.array_equal(stored[alpha == 0], image[alpha == 0])
    # The fake model paints its mask white: deep inside the photo's mask, white at full resolution.
    deep = ~feather_alpha(mask < 128, 40).astype(bool)
    assert deep.sum() > 100_000
    assert (stored[deep] == 255).all()


def test_with_reduce_context_off_the_crop_goes_at_full_resolution() -> None:
    world, image, mask = big_mask_world(reduce_context=False)
    assert world.deliver(seed=4).kind is OutcomeKind.DONE
    (request,) = world.model.calls
    assert world.document["model"]["contextReduction"] == 1
    box = context_box(mask, world.model.geometry)
    expected = (600, 800) if box is None else (box.height, box.width)
    assert request.image.shape[:2] == expected
    painted = image.copy()
    painted[mask >= 128] = 255  # the fake model's own answer, pasted as it is
    assert np.array_equal(edited_png(world), painted)


def test_a_jpeg_job_with_a_reduced_crop_is_spliced_and_keeps_the_blocks_far_from_the_mask() -> None:
    world, image, mask = big_mask_world()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    world.objects.objects = {f"{PREFIX}/original.jpg": buffer.getvalue(), f"{PREFIX}/mask.png": png(mask)}
    assert world.deliver(seed=4).kind is OutcomeKind.DONE
    assert world.document["result"]["encoding"] == "dct_splice"
    before = np.asarray(Image.open(buffer))
    after = np.asarray(Image.open(io.BytesIO(world.objects.objects[f"{PREFIX}/edited.jpg"])))
    # 16x16 MCUs (4:2:0) farther than the feather and the chroma's reach from the mask decode as before.
    far = feather_alpha(mask >= 128, SHIPPED.feather_pixels + 32) == 0
    assert far.sum() > 50_000
    assert np.array_equal(after[far], before[far])
    assert not np.array_equal(after, before)


class WrongSizeModel:
    """Answers an image one column narrower than it was sent: a model that broke the tensor contract."""

    name, protocol = "wrong_size", "fake"

    def __init__(self) -> None:
        self.calls = 0

    def is_ready(self) -> bool:
        return True

    def unready_reason(self) -> str:
        return ""

    def crop_geometry(self) -> CropGeometry:
        return replace(SHIPPED, min_working_pixels=256)

    def infer(self, request: InferenceRequest, **_: Any) -> InferenceResult:
        self.calls += 1
        return InferenceResult(request.image[:, 1:], request.seed)


def test_an_answer_of_the_wrong_size_gives_the_job_back_and_writes_nothing() -> None:
    world = large_world()
    world.model = WrongSizeModel()  # type: ignore[assignment]
    world.handler = world.another_bridge()
    outcome = world.deliver()
    assert outcome.kind is OutcomeKind.RETRY
    assert "the model answered an image of shape" in outcome.reason
    assert f"{PREFIX}/edited.png" not in world.objects.objects
    assert world.document["status"] == "queued"
