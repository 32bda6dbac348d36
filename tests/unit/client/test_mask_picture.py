"""docs/masks.png shows what our own code selects for each way of giving a mask: redrawn, it is unchanged."""

import importlib.util

import numpy as np
from PIL import Image

from tests.support import REPO_ROOT


def test_the_committed_picture_is_what_the_mask_rules_draw() -> None:
    spec = importlib.util.spec_from_file_location("mask_picture", REPO_ROOT / "docs" / "mask_picture.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with Image.open(module.PICTURE) as committed:
        assert np.array_equal(np.asarray(committed.convert("RGB")), np.asarray(module.draw())), (
            "docs/masks.png is stale: run `python docs/mask_picture.py`"
        )
