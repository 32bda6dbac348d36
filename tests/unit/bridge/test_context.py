"""Only the model's context travels to Triton, and the result is the one the whole photo would have given."""

import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fluxfill.bridge.context import CropGeometry, context_box, pasted
from fluxfill.bridge.errors import RetryableError
from fluxfill.bridge.outcome import OutcomeKind
from fluxfill.bridge.ports import InferenceRequest, InferenceResult
from fluxfill.inpaint.engine import InpaintEngine
from fluxfill.inpaint.geometry import Box, plan_crop
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


class WrongSizeModel:
    """Answers an image one column narrower than it was sent: a model that broke the tensor contract."""

    name, protocol = "wrong_size", "fake"

    def __init__(self) -> None:
        self.calls = 0

    def is_ready(self) -> bool:
        return True

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
