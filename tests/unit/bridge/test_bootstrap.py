"""Process-wide settings the bridge makes once, when it is built."""

import json
import subprocess
import sys

from tests.support import REPO_ROOT

BLAS_THREADS = """
import json
import numpy as np
from threadpoolctl import threadpool_info
from fluxfill.bridge.bootstrap import single_threaded_blas

def blas_threads():
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

before = blas_threads()
single_threaded_blas()
product = np.ones((3000, 64), np.float32) @ np.ones((64, 64), np.float32)  # BLAS still answers
print(json.dumps({"before": before, "after": blas_threads(), "product": float(product[0, 0])}))
"""


def test_the_bridge_runs_blas_on_the_calling_thread() -> None:
    """numpy's OpenBLAS starts a thread per core. In a child process: this suite's own BLAS is untouched."""
    done = subprocess.run(
        [sys.executable, "-c", BLAS_THREADS],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "2"},  # as on any machine of 2 cores or more
    )
    assert done.returncode == 0, done.stderr[-2000:]
    threads = json.loads(done.stdout)
    assert threads["before"] == [2]
    assert threads["after"] == [1]
    assert threads["product"] == 64.0
