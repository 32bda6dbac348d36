"""Memory per job, measured in a fresh process on a 12 MP phone-size photo: the bounds manifests build on."""

import json
import subprocess
import sys
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image

from fluxfill.bridge.intake import INTAKE_BYTES_PER_PIXEL
from fluxfill.bridge.settings import HANDLER_BYTES_PER_PIXEL
from tests.support import REPO_ROOT

WIDTH, HEIGHT = 4000, 3000
pillow_heif.register_heif_opener()  # saves HEIC (the bridge's intake registers it for reading)

# The peak is this process's own VmHWM, not getrusage's ru_maxrss: on Linux that starts at the parent's
# peak (kept across exec), so under a large pytest process it hid up to 10 bytes a pixel.
PEAK = """
def peak_bytes():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
"""

DECODE = (
    PEAK
    + """
import json, sys
from pathlib import Path
from fluxfill.bridge import intake
data = Path(sys.argv[1]).read_bytes()
before = peak_bytes()
photo = intake.decode_photo(data, 50_000_000)
grown = peak_bytes() - before
print(json.dumps(grown / (photo.shape[0] * photo.shape[1])))
"""
)

WHOLE_JOB = (
    PEAK
    + """
import json, sys
from pathlib import Path
from tests.unit.bridge.world import PREFIX, World
world = World(max_image_pixels=50_000_000, max_object_bytes=100_000_000, job_deadline_s=600)
world.objects.objects = {
    f"{PREFIX}/original.png": Path(sys.argv[1]).read_bytes(),
    f"{PREFIX}/mask.png": Path(sys.argv[2]).read_bytes(),
}
world.model.steps = 1


# The fake model's record of its requests, counted, not kept: it would hold their images, as the Triton
# adapter does not.
class Forgotten(list):
    seen = 0

    def append(self, request):
        self.seen += 1

    def __len__(self):
        return self.seen


world.model.calls = Forgotten()
before = peak_bytes()
outcome = world.deliver()
assert outcome.kind.value == "done", outcome
grown = peak_bytes() - before
print(json.dumps(grown / (int(sys.argv[3]) * int(sys.argv[4]))))
"""
)


def bytes_per_pixel(script: str, *args: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("memory")
    rgb = Image.new("RGB", (WIDTH, HEIGHT), (10, 200, 30))
    files = {
        "rgba.png": Image.new("RGBA", (WIDTH, HEIGHT), (10, 200, 30, 128)),
        "rgb.jpg": rgb,
        "palette.png": Image.new("P", (WIDTH, HEIGHT), 3),
        "rgb.heic": rgb,
        "rgb.avif": rgb,
        "rgb.webp": rgb,
        "cmyk.jpg": rgb.convert("CMYK"),
        "grey.jpg": rgb.convert("L"),
        "grey16.png": Image.new("I;16", (WIDTH, HEIGHT), 40000),
    }
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (1000, 1000, 3000, 2500))
    files["mask.png"] = mask
    for name, image in files.items():
        image.save(folder / name)
    # Unsubsampled (an editor's high-quality export: twice the coefficients of 4:2:0) and progressive (the
    # web's and messaging apps' photos), spliced.
    rgb.save(folder / "rgb444.jpg", subsampling=0)
    rgb.save(folder / "progressive.jpg", progressive=True)
    rgb.save(folder / "progressive444.jpg", progressive=True, subsampling=0)
    return {path.name: path for path in folder.iterdir()}


@pytest.mark.parametrize("name", ["rgba.png", "rgb.jpg", "palette.png", "rgb.heic"])
def test_decoding_keeps_one_full_size_copy_beside_the_decoded_image(
    photos: dict[str, Path], name: str
) -> None:
    """A 50 MP RGBA photo once took 1.15 GB: whole-image copies to composite transparency (22 bytes/pixel)."""
    assert bytes_per_pixel(DECODE, str(photos[name])) <= INTAKE_BYTES_PER_PIXEL


@pytest.mark.parametrize(
    "name",
    [
        "rgba.png",
        "rgb.jpg",
        "rgb444.jpg",
        "rgb.heic",
        "rgb.avif",
        "rgb.webp",
        "cmyk.jpg",
        "grey.jpg",
        "grey16.png",
        "progressive.jpg",
        "progressive444.jpg",
    ],
)
def test_a_whole_job_stays_within_its_memory_budget(photos: dict[str, Path], name: str) -> None:
    """Every format the bridge takes, each by its own decoder, and a JPEG result spliced or re-encoded: the
    manifests' memory limits build on this bound. A CMYK JPEG took 28.6 a pixel while its four planes of
    coefficients were read ahead for a splice that is refused for CMYK; a 4:4:4 JPEG 30.4 while jpeglib
    copied every plane before libjpeg copied it again (only 4:2:0 was measured then)."""
    measured = bytes_per_pixel(WHOLE_JOB, str(photos[name]), str(photos["mask.png"]), str(WIDTH), str(HEIGHT))
    assert measured <= HANDLER_BYTES_PER_PIXEL, f"{measured:.1f} bytes per pixel"
