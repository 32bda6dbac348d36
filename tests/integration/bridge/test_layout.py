"""A deployment's own layout of objects and session documents: the bridge and the command line read the same
FLUXFILL_BRIDGE_*_TEMPLATE variables, so `fluxfill submit | watch | fetch | cancel` act where it does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fluxfill.client.local_server import LocalTritonServer
from tests.integration.bridge.harness import PROJECT, JobSystem, box_mask, photo, running_bridge

pytestmark = pytest.mark.integration

FLUXFILL = str(Path(sys.executable).parent / "fluxfill")
USER = "owner-1"
LAYOUT = {
    "original_template": "uploads/{userId}/{sessionId}/photo.*",
    "mask_template": "uploads/{userId}/{sessionId}/mask.*",
    "edited_template": "results/{userId}/{sessionId}/photo.*",
    "preview_template": "results/{userId}/{sessionId}/preview.jpg",
    "session_template": "apps/pets/owners/{userId}/edits/{sessionId}",
}


def test_the_command_line_submits_watches_fetches_and_cancels_where_the_bridge_looks(
    jobs: JobSystem, flux_server: LocalTritonServer, tmp_path: Path
) -> None:
    """Before, the command line used the contract's default paths whatever the bridge was told: the job it
    submitted was orphaned (no session document where the bridge looked); `watch` saw it queued for ever."""
    Image.fromarray(photo(48, 64)).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(box_mask(48, 64)).save(tmp_path / "mask.png")
    env = {
        **os.environ,
        "FLUXFILL_PROJECT": PROJECT,
        "FLUXFILL_BUCKET": jobs.bucket,
        "FLUXFILL_TOPIC": jobs.topic_id,
        "FLUXFILL_USER": USER,
        **{f"FLUXFILL_BRIDGE_{name.upper()}": template for name, template in LAYOUT.items()},
    }

    def fluxfill(*args: str | Path) -> subprocess.CompletedProcess[str]:
        argv = [FLUXFILL, *map(str, args)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, check=False)

    with running_bridge(jobs.settings(flux_server.grpc_url, **LAYOUT)) as bridge:
        submitted = fluxfill("submit", tmp_path / "photo.jpg", tmp_path / "mask.png", "--steps", "2")
        assert submitted.returncode == 0, submitted.stderr
        session = submitted.stdout.strip()
        watched = fluxfill("watch", session, "--timeout", "60")
        assert watched.returncode == 0, watched.stderr
        assert f"{session}: done: results/{USER}/{session}/photo.jpg (64x48" in watched.stdout
        fetched = fluxfill("fetch", session, "--output-dir", tmp_path / "fetched")
        assert fetched.returncode == 0, fetched.stderr
        assert bridge.counted("done") == 1
        assert bridge.counted("orphaned") == 0
    names = {blob.name for blob in jobs.storage_client.list_blobs(jobs.bucket)}
    assert names == {
        f"uploads/{USER}/{session}/photo.jpg",
        f"uploads/{USER}/{session}/mask.png",
        f"results/{USER}/{session}/photo.jpg",
        f"results/{USER}/{session}/preview.jpg",
    }
    assert sorted(path.name for path in (tmp_path / "fetched").iterdir()) == [
        f"{session}-edited.jpg",
        f"{session}-preview.jpg",
    ]
    assert jobs.db.document(f"apps/pets/owners/{USER}/edits/{session}").get().get("status") == "done"
    # No bridge now: the next job stays queued, and its cancellation lands on its document.
    queued = fluxfill("submit", tmp_path / "photo.jpg", tmp_path / "mask.png").stdout.strip()
    cancelled = fluxfill("cancel", queued)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"{queued}: cancel requested\n"
    assert jobs.db.document(f"apps/pets/owners/{USER}/edits/{queued}").get().get("cancelRequested") is True
    assert not jobs.db.collection("users").get(), "nothing at the contract's default paths"
