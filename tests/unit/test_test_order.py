"""`make test`'s workers start the modules marked `long` first (tests/conftest.py), whatever their test
count."""

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).parents[1] / "conftest.py"
SHORT_MODULES = 4
STARTS = "starts.txt"

# Each test appends its worker and module when it starts: a line per write, so the workers' lines do not mix.
RECORDING_TEST = """
import os
from pathlib import Path

import pytest

{mark}

@pytest.mark.parametrize("case", range({cases}))
def test_it(case: int) -> None:
    with Path({starts!r}).open("a") as starts:
        starts.write(f"{{os.environ['PYTEST_XDIST_WORKER']}} {{__name__}}\\n")
"""


def test_a_long_module_with_fewer_tests_than_the_others_starts_before_them(tmp_path: Path) -> None:
    # pytest-xdist by default hands out modules by their test count, most first: a long module of few tests
    # (the chaos runs: 3 tests, 4 minutes) then ran last, alone on one worker while the other waited.
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    long: minutes of wall time\n")
    starts = tmp_path / STARTS
    for index in range(SHORT_MODULES):
        (tmp_path / f"test_short_{index}.py").write_text(
            RECORDING_TEST.format(mark="", cases=5, starts=str(starts))
        )
    (tmp_path / "test_zz_long.py").write_text(
        RECORDING_TEST.format(mark="pytestmark = pytest.mark.long", cases=1, starts=str(starts))
    )
    # make test's scheduling options (the Makefile's `test` target), on two workers as on CI.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--numprocesses=2",
            "--dist=loadscope",
        ],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = starts.read_text().splitlines()
    assert len(lines) == SHORT_MODULES * 5 + 1, lines
    firsts = {}
    for line in lines:
        worker, module = line.split()
        firsts.setdefault(worker, module)
    # The first thing one worker runs, not a timing: the other worker may race through short tests meanwhile.
    assert "test_zz_long" in firsts.values(), lines
