"""The bridge in pull mode against the Pub/Sub, Firestore and Storage emulators and a real tritonserver."""

import gzip
import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from PIL import Image

from fluxfill.bridge import leases
from fluxfill.bridge.adapters.storage import CloudStorageObjects
from fluxfill.bridge.errors import AmbiguousObjectError, TritonUnavailableError
from fluxfill.bridge.outcome import Delivery, Outcome
from fluxfill.bridge.ports import InferenceResult
from fluxfill.bridge.pull import PULL_WAIT_S
from fluxfill.client.local_server import LocalTritonServer
from tests.integration.bridge.harness import (
    POLICY_ATTEMPTS,
    GatedModel,
    JobSystem,
    TcpProxy,
    box_mask,
    encode,
    is_terminal,
    photo,
    running_bridge,
    wait_until,
)
from tests.unit.bridge.fakes import AlwaysReady

pytestmark = pytest.mark.integration
FEATHER = 8  # the shipped feather_pixels: pixels farther than this from the mask are untouched


def test_happy_path_writes_result_preview_and_done(jobs: JobSystem, flux_server: LocalTritonServer) -> None:
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(flux_server.grpc_url, progress_interval_s=0.01)) as bridge:
        jobs.publish({"userId": user, "sessionId": session, "prompt": "a red ball", "steps": 3, "seed": 7})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "done", document
    edited = np.asarray(Image.open(io.BytesIO(jobs.download(user, session, "edited.png"))))
    original, mask = photo(), box_mask()
    assert edited.shape == original.shape
    far = np.ones_like(mask, bool)
    rows, cols = np.nonzero(mask)
    far[rows.min() - FEATHER : rows.max() + FEATHER + 1, cols.min() - FEATHER : cols.max() + FEATHER + 1] = (
        False
    )
    assert np.array_equal(edited[far], original[far]), "unmasked pixels must be unchanged"
    assert not np.array_equal(edited[mask >= 128], original[mask >= 128])
    preview = Image.open(io.BytesIO(jobs.download(user, session, "preview.jpg")))
    assert preview.format == "JPEG"
    assert max(preview.size) <= 512
    assert document["result"]["seed"] == 7
    assert (document["result"]["width"], document["result"]["height"]) == (128, 96)
    assert document["progress"] == {"step": 3, "total": 3}
    assert document["model"]["model"] == "flux_fill_stream"
    assert document["model"]["steps"] == 3
    assert document["attempt"] == 1
    assert document["error"] is None
    assert bridge.counted("done") == 1


def phone_photo(kind: str) -> bytes:
    """The harness photo stored sideways with EXIF orientation 6, as a phone writes a JPEG (or HEIC)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.rot90(photo(), 1)).save(buffer, format=kind, quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def test_a_phone_jpeg_comes_back_a_jpeg_spliced_in_its_own_orientation(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    original = phone_photo("JPEG")
    user, session = jobs.new_job(original)
    with running_bridge(jobs.settings(flux_server.grpc_url)):
        jobs.publish({"userId": user, "sessionId": session, "steps": 2, "seed": 3})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "done", document
    result = document["result"]
    assert (result["format"], result["encoding"]) == ("jpeg", "dct_splice")
    assert result["paths"]["edited"].endswith(f"/{session}/edited.jpg")
    assert (result["width"], result["height"]) == (128, 96)  # upright, as the mask was painted
    edited = jobs.download(user, session, "edited.jpg")
    stored = Image.open(io.BytesIO(edited))
    assert stored.size == (96, 128)  # still stored sideways
    assert stored.getexif()[0x0112] == 6
    assert stored.info["exif"] == Image.open(io.BytesIO(original)).info["exif"]
    assert len(edited) <= 1.2 * len(original)


def test_a_heic_original_comes_back_an_upright_jpeg(jobs: JobSystem, flux_server: LocalTritonServer) -> None:
    user, session = jobs.new_job(phone_photo("HEIF"))
    with running_bridge(jobs.settings(flux_server.grpc_url)):
        jobs.publish({"userId": user, "sessionId": session, "steps": 2, "seed": 3})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "done", document
    assert (document["result"]["format"], document["result"]["encoding"]) == ("jpeg", "reencoded")
    edited = Image.open(io.BytesIO(jobs.download(user, session, "edited.jpg")))
    assert edited.size == (128, 96)
    assert 0x0112 not in edited.getexif()


def test_duplicate_delivery_writes_one_result_and_one_terminal_state(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    user, session = jobs.new_job()
    job = {"userId": user, "sessionId": session, "steps": 2}
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        jobs.publish(job)
        first = jobs.wait_for(user, session, is_terminal)
        jobs.publish(job)
        wait_until(lambda: bridge.counted("duplicate") == 1)
    assert first["status"] == "done"
    assert jobs.session(user, session)["finishedAt"] == first["finishedAt"], (
        "the terminal state must not change"
    )
    assert bridge.counted("done") == 1
    assert jobs.session(user, session)["attempt"] == 1


def test_two_bridges_racing_for_one_job_have_one_winner(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    user, session = jobs.new_job()
    job = {"userId": user, "sessionId": session, "steps": 2}
    first_settings = jobs.settings(flux_server.grpc_url, instance_id="bridge-a")
    second_settings = jobs.settings(flux_server.grpc_url, instance_id="bridge-b")
    with running_bridge(first_settings) as first, running_bridge(second_settings) as second:
        for _ in range(4):
            jobs.publish(job)
        wait_until(lambda: sum(b.counted("done") + b.counted("duplicate") for b in (first, second)) == 4)
    assert first.counted("done") + second.counted("done") == 1
    document = jobs.session(user, session)
    assert document["status"] == "done"
    assert document["attempt"] == 1
    assert document["owner"] in {"bridge-a", "bridge-b"}


def test_malformed_message_is_acked_and_dead_lettered(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        message_id = jobs.publish(b"{not json")
        dead = jobs.dead_letters(expected=1)
        time.sleep(1.0)  # an unacked message would be redelivered within this time
    assert len(dead) == 1
    assert dead[0].data == b"{not json"
    assert dead[0].attributes["fluxfillErrorCode"] == "malformed_message"
    assert dead[0].attributes["fluxfillOriginalMessageId"] == message_id
    assert bridge.counted("dead_letter") == 1


def test_invalid_job_fails_its_session_with_the_field_named(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(flux_server.grpc_url)):
        jobs.publish({"userId": user, "sessionId": session, "steps": 1000})
        document = jobs.wait_for(user, session, is_terminal)
        dead = jobs.dead_letters(expected=1)
    assert document["status"] == "failed"
    assert document["error"]["code"] == "invalid_job"
    assert "steps" in document["error"]["message"]
    assert dead[0].attributes["fluxfillErrorCode"] == "invalid_job"


def test_a_prompt_longer_than_the_model_reads_fails_with_the_models_sentence(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Within the contract's 4,096 bytes, beyond the 512 tokens of T5: diffusers ran such a job on the
    prompt's beginning alone ("a" is one token of the tiny vocabulary)."""
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        jobs.publish({"userId": user, "sessionId": session, "prompt": "a " * 600, "steps": 2})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "failed", document
    assert document["error"] == {
        "code": "model_rejected_input",
        "message": "the model refused the input: PROMPT: is 601 tokens long; the model reads at most 512 "
        "(max_sequence_length of its T5 text encoder): shorten it",
    }
    assert jobs.pull_now(timeout_s=2) == [], "acked: the same prompt would be refused again"
    assert bridge.counted("failed") == 1


def test_corrupt_image_fails_with_corrupt_image(jobs: JobSystem, flux_server: LocalTritonServer) -> None:
    user, session = jobs.new_job(photo_bytes=encode(photo())[:200])
    with running_bridge(jobs.settings(flux_server.grpc_url)):
        jobs.publish({"userId": user, "sessionId": session})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "failed"
    assert document["error"]["code"] == "corrupt_image"


def test_oversized_object_fails_without_being_downloaded(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    big = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    user, session = jobs.new_job(photo_bytes=encode(big))
    with running_bridge(jobs.settings(flux_server.grpc_url, max_object_bytes=100_000)) as bridge:
        jobs.publish({"userId": user, "sessionId": session})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["error"]["code"] == "object_too_large"
    assert bridge.bridge.metrics.sample("fluxfill_bridge_downloaded_bytes_total") == 0


def test_an_original_stored_gzip_encoded_is_refused_unread_not_inflated(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Cloud Storage serves an object stored with Content-Encoding: gzip inflated, and the client library
    inflated it whole: the size checked against max_object_bytes was the compressed one, so 50 KB of gzip
    were 50 MB of zeros in the bridge's memory (an app's user may set the encoding of an upload: Firebase's
    SDKs take contentEncoding)."""
    user, session = jobs.new_job()
    bomb = gzip.compress(bytes(50_000_000), compresslevel=9)
    assert len(bomb) < 100_000
    path = f"users/{user}/sessions/{session}/original.png"
    blob = jobs.storage_client.bucket(jobs.bucket).blob(path)
    blob.content_encoding = "gzip"
    blob.upload_from_string(bomb, content_type="image/png")
    info = CloudStorageObjects(jobs.storage_client, jobs.bucket).find(path)
    assert info is not None
    assert (info.size, info.content_encoding) == (len(bomb), "gzip")
    assert CloudStorageObjects(jobs.storage_client, jobs.bucket).read(info) == bomb, "read as stored"

    with running_bridge(jobs.settings(flux_server.grpc_url, max_object_bytes=1_000_000)) as bridge:
        jobs.publish({"userId": user, "sessionId": session})
        document = jobs.wait_for(user, session, is_terminal)

    assert document["error"]["code"] == "unsupported_image_format"
    assert "stored with Content-Encoding: gzip" in document["error"]["message"]
    assert bridge.bridge.metrics.sample("fluxfill_bridge_downloaded_bytes_total") == 0


def test_two_originals_in_cloud_storage_are_both_named_and_a_folder_beside_them_is_not(
    jobs: JobSystem,
) -> None:
    user, session = jobs.new_job()
    jobs.upload(user, session, "original.heic", b"the photo picked again")
    jobs.upload(user, session, "original.heic/cover.png", b"an object in a folder: no match")
    prefix = f"users/{user}/sessions/{session}"
    with pytest.raises(AmbiguousObjectError) as caught:
        CloudStorageObjects(jobs.storage_client, jobs.bucket).find(f"{prefix}/original.*")
    assert caught.value.paths == [f"{prefix}/original.heic", f"{prefix}/original.png"]


def test_the_original_is_found_beside_more_objects_in_a_folder_than_one_listing_page_holds(
    jobs: JobSystem,
) -> None:
    """The listing was cut at ten names and folders were left out after: ten objects under `original.a/`
    (names before `original.png`) hid the photo, and the job waited for an upload that was there."""
    user, session = jobs.new_job()
    for index in range(12):
        jobs.upload(user, session, f"original.a/{index:02}.png", b"an object in a folder: no match")
    prefix = f"users/{user}/sessions/{session}"
    found = CloudStorageObjects(jobs.storage_client, jobs.bucket).find(f"{prefix}/original.*")
    assert found is not None
    assert found.path == f"{prefix}/original.png"


def test_missing_original_fails_with_original_missing_once_the_upload_grace_is_over(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    user, session = f"u{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"
    jobs.document(user, session).set({"status": "queued"})
    with running_bridge(jobs.settings(flux_server.grpc_url, upload_grace_s=1)):
        jobs.publish({"userId": user, "sessionId": session})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["error"]["code"] == "original_missing"
    assert "not uploaded within 1 s of the job's publication" in document["error"]["message"]


def test_a_job_for_a_session_nobody_made_runs_nothing_and_makes_no_session(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """A fabricated message (no session document, no uploads): looked at again within the grace (the document
    may be late), then acked; nothing written."""
    user, session = f"u{uuid.uuid4().hex[:8]}", "nothing"
    with running_bridge(jobs.settings(flux_server.grpc_url, upload_grace_s=2)) as bridge:
        jobs.publish({"userId": user, "sessionId": session})
        wait_until(lambda: bridge.counted("orphaned") == 1)
        # Nacked with the grace's end as its ack deadline: back once or twice, not at once again and again.
        assert 1 <= bridge.counted("retry") <= 3
    assert not jobs.document(user, session).get().exists


def test_a_job_published_before_its_session_document_is_written_runs_once_it_is(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """The app's write of the document lands after the job's publication (queued offline by its SDK while a
    function publishes): the job comes back to look again, and runs once the document is there."""
    user, session = f"u{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"
    jobs.upload(user, session, "original.png", encode(photo()))
    jobs.upload(user, session, "mask.png", encode(box_mask()))
    with running_bridge(jobs.settings(flux_server.grpc_url, upload_grace_s=60)) as bridge:
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        wait_until(lambda: bridge.counted("retry") == 1)
        assert not jobs.document(user, session).get().exists, "nothing written to a missing document"
        jobs.document(user, session).set({"status": "queued"})
        document = jobs.wait_for(user, session, is_terminal)
        assert bridge.counted("retry") == 1, "nacked with a delay: it came back once, not at once"
    assert document["status"] == "done", document
    assert bridge.counted("orphaned") == 0


def test_a_user_whose_uid_comes_from_another_auth_system_gets_their_job_done(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """A custom token's uid (Auth0's `auth0|...`, Cognito's `region:...`, an e-mail address) names the user's
    folder and document as it is, in Storage, Firestore and the per-user slots alike."""
    uid = f"auth0|rex.owner+{uuid.uuid4().hex[:6]}@example.org:aGk="
    user, session = jobs.new_job(user=uid)
    settings = jobs.settings(flux_server.grpc_url, max_jobs_in_flight_per_user=1, topic=jobs.topic_id)
    with running_bridge(settings) as bridge:
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "done", document
    assert document["result"]["paths"]["edited"] == f"users/{uid}/sessions/{session}/edited.png"
    names = {blob.name for blob in jobs.storage_client.list_blobs(jobs.bucket, prefix=f"users/{uid}/")}
    assert {f"users/{uid}/sessions/{session}/{name}" for name in ("edited.png", "preview.jpg")} <= names
    assert bridge.counted("done") == 1


def test_a_session_id_the_contract_refuses_for_its_characters_is_failed_saying_why(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """An app whose session ids are ISO times: each job was dead-lettered with no record, and its session
    stayed queued for ever. Now the app's document says why, in Firestore's own path for such an id."""
    user, session = f"u{uuid.uuid4().hex[:8]}", "2026-12-07T10:00:00.000Z"
    jobs.document(user, session).set({"status": "queued"})
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        document = jobs.wait_for(user, session, is_terminal)
        [dead] = jobs.dead_letters(1)
    assert document["status"] == "failed"
    assert document["error"]["code"] == "invalid_job"
    assert (
        "sessionId: Value error, an id is 1 to 128 of the characters A-Z a-z 0-9 _ -"
        in document["error"]["message"]
    )
    assert json.loads(dead.data)["sessionId"] == session
    assert bridge.counted("dead_letter") == 1


def test_a_job_published_while_its_photo_and_mask_upload_waits_for_them(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """An app whose Cloud Function publishes on the session's creation, with the phone still uploading."""
    user, session = f"u{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"
    jobs.document(user, session).set({"status": "queued"})
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        jobs.wait_for(user, session, lambda document: document.get("status") == "processing")
        jobs.upload(user, session, "original.png", encode(photo()))
        jobs.upload(user, session, "mask.png", encode(box_mask()))
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "done", document
    assert document["attempt"] == 1
    assert bridge.counted("done") == 1


def test_nothing_is_pulled_while_triton_is_down_and_the_job_is_done_once_it_is_back(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    proxy = TcpProxy(flux_server.grpc_port)
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(proxy.url)) as bridge:
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        time.sleep(1.5)
        assert jobs.session(user, session)["status"] == "queued", "no job may be taken while Triton is down"
        ready = httpx.get(f"{bridge.url}/readyz")
        assert ready.status_code == 503
        proxy.up()
        try:
            document = jobs.wait_for(user, session, is_terminal)
            assert httpx.get(f"{bridge.url}/readyz").status_code == 200
        finally:
            proxy.down()
    assert document["status"] == "done"


def test_triton_lost_mid_service_retries_the_job_until_it_is_back(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    proxy = TcpProxy(flux_server.grpc_port)
    proxy.up()
    user, session = jobs.new_job()
    try:
        # A readiness poll too slow to matter: the job itself finds Triton gone (never the poll, however slow
        # the machine), and the test checks readiness itself once Triton is back, as the next poll would.
        with running_bridge(jobs.settings(proxy.url, readiness_interval_s=600.0)) as bridge:
            wait_until(lambda: bridge.bridge.readiness.ready)
            proxy.down()
            jobs.publish({"userId": user, "sessionId": session, "steps": 2})
            # The failed attempt counts a retry and gives the job back (queued) for the next delivery.
            wait_until(
                lambda: bridge.counted("retry") >= 1 and jobs.session(user, session)["status"] == "queued",
                timeout_s=120,
            )
            assert not bridge.bridge.readiness.ready, "a Triton call that failed as unavailable marks it"
            proxy.up()
            # As the poll would (each check on a connection of its own: no backoff left from the failures).
            wait_until(bridge.bridge.readiness.check, timeout_s=60)
            document = jobs.wait_for(user, session, is_terminal)
    finally:
        proxy.down()
    assert document["status"] == "done"
    assert bridge.counted("retry") >= 1
    assert document["attempt"] == 2


def test_a_job_given_back_on_its_last_deliveries_is_carried_over_not_dead_lettered(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Each time the bridge gives a job back (here: held under a live claim that is not its message's, as it
    would for Firestore away or a shutdown), Pub/Sub counts a delivery attempt, and dead-letters the job,
    unclaimed, on the subscription's last. On its last two the job is published anew instead, with the
    emulator's own delivery_attempt, and runs once the claim is given back."""
    user, session = jobs.new_job()
    lease_ends = datetime.now(UTC) + timedelta(hours=1)
    jobs.document(user, session).set(
        {"status": "processing", "claimId": "elsewhere", "leaseExpiresAt": lease_ends}
    )
    settings = jobs.settings(
        flux_server.grpc_url, topic=jobs.topic_id, subscription_max_delivery_attempts=POLICY_ATTEMPTS
    )
    with running_bridge(settings) as bridge:
        first = jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        carried = {"why": "retry"}
        wait_until(
            lambda: bridge.bridge.metrics.sample("fluxfill_bridge_carried_over_total", carried) >= 2,
            timeout_s=60,
        )
        jobs.document(user, session).set({"status": "queued"})  # the other claim given back
        document = jobs.wait_for(user, session, is_terminal, timeout_s=60)
        assert jobs.dead_letters(expected=1, timeout_s=3) == [], "Pub/Sub dead-lettered the job"
    assert (document["status"], document["messageId"], document["attempt"]) == ("done", first, 1)


def test_a_job_waiting_for_a_slot_on_its_last_deliveries_is_carried_over_when_the_bridge_stops(
    jobs: JobSystem,
) -> None:
    """Held, not yet running, when the bridge stops (a deploy): given back on the subscription's last
    delivery, Pub/Sub would dead-letter it unclaimed; it is published anew instead."""
    user, session = jobs.new_job()
    job = {"userId": user, "sessionId": session}
    jobs.publish(job)
    for _ in range(POLICY_ATTEMPTS - 2):  # deliveries spent elsewhere: given back each time
        (received,) = jobs.subscriber.pull(
            subscription=jobs.subscription, max_messages=1, timeout=10
        ).received_messages
        jobs.subscriber.modify_ack_deadline(
            subscription=jobs.subscription, ack_ids=[received.ack_id], ack_deadline_seconds=0
        )
    (last,) = jobs.subscriber.pull(
        subscription=jobs.subscription, max_messages=1, timeout=10
    ).received_messages
    running = jobs.new_job()
    model = GatedModel(running[1])
    settings = jobs.settings(
        "127.0.0.1:1",
        urgent_subscription=jobs.urgent_subscription_id,  # a lane's one message beyond the slot then waits
        max_concurrent_jobs=1,
        topic=jobs.topic_id,
        subscription_max_delivery_attempts=POLICY_ATTEMPTS,
    )
    with running_bridge(settings, model) as bridge:
        jobs.publish({"userId": running[0], "sessionId": running[1], "prompt": running[1]})
        wait_until(lambda: model.started == [running[1]])
        jobs.subscriber.modify_ack_deadline(  # its last delivery goes to the bridge
            subscription=jobs.subscription, ack_ids=[last.ack_id], ack_deadline_seconds=0
        )
        metrics = bridge.bridge.metrics
        wait_until(lambda: metrics.sample("fluxfill_bridge_jobs_waiting", {"lane": "bulk"}) == 1)
        bridge.service.request_stop()
        model.release(running[1])
        bridge.stop()
        carried = metrics.sample("fluxfill_bridge_carried_over_total", {"why": "stopping"})
    assert carried == 1
    (copy,) = jobs.pull_now()
    assert (json.loads(copy.data), copy.attributes["fluxfillOriginalMessageId"]) == (
        job,
        last.message.message_id,
    )
    assert jobs.dead_letters(expected=1, timeout_s=3) == []
    assert jobs.session(user, session)["status"] == "queued", "never claimed"


class FailingInference(AlwaysReady):
    """Our InpaintModel port, READY but failing every run with a retryable error (an internal one, say)."""

    name, protocol = "flux_fill_stream", "grpc-stream"

    def infer(self, *_args: object, **_kwargs: object) -> InferenceResult:
        raise TritonUnavailableError("triton: internal error: RuntimeError: CUDA error")


def test_job_failing_every_attempt_is_failed_and_dead_lettered(jobs: JobSystem) -> None:
    user, session = jobs.new_job()
    settings = jobs.settings("127.0.0.1:1", max_delivery_attempts=3)
    with running_bridge(settings, FailingInference()) as bridge:
        message_id = jobs.publish({"userId": user, "sessionId": session})
        document = jobs.wait_for(user, session, is_terminal)
        dead = jobs.dead_letters(expected=1)
    assert document["status"] == "failed"
    assert document["error"]["code"] == "retries_exhausted"
    assert "CUDA error" in document["error"]["message"]
    assert document["attempt"] == 3
    assert bridge.counted("retry") == 2
    assert [m.attributes["fluxfillOriginalMessageId"] for m in dead] == [message_id]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unary_fallback_protocols_finish_the_job(
    jobs: JobSystem, flux_server: LocalTritonServer, protocol: str
) -> None:
    url = flux_server.http_url if protocol == "http" else flux_server.grpc_url
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(url, triton_protocol=protocol)):
        jobs.publish({"userId": user, "sessionId": session, "steps": 2, "seed": 3})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "done"
    assert document["model"]["model"] == "flux_fill"
    assert document["model"]["protocol"] == protocol


def test_a_stop_ends_the_pull_waiting_for_messages_at_once(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """An idle bridge's pull waits up to PULL_WAIT_S for messages; SIGTERM closes its channel instead of
    waiting (Cloud Run allows 10 s in all); a message published after the stop stays for another bridge."""
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        wait_until(lambda: bridge.bridge.readiness.ready)
        time.sleep(1.0)  # the pull is now waiting on an empty subscription
        started = time.monotonic()
        bridge.stop(timeout_s=PULL_WAIT_S)
        stopped_in_s = time.monotonic() - started
    assert stopped_in_s < PULL_WAIT_S / 2, f"the stop waited {stopped_in_s:.1f} s for the pull"
    user, session = jobs.new_job()
    jobs.publish({"userId": user, "sessionId": session, "steps": 2})
    with running_bridge(jobs.settings(flux_server.grpc_url)):
        assert jobs.wait_for(user, session, is_terminal)["status"] == "done"


def test_a_pull_that_fails_is_counted_and_tried_again(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """A subscription that is not there (deleted, renamed): the bridge keeps running, says so in its log and
    in `fluxfill_bridge_pull_errors_total`, and keeps trying."""
    settings = jobs.settings(flux_server.grpc_url, subscription=f"missing-{jobs.name}")
    with running_bridge(settings) as bridge:
        metrics = bridge.bridge.metrics
        wait_until(lambda: metrics.sample("fluxfill_bridge_pull_errors_total", {"lane": "bulk"}) >= 2)
        assert httpx.get(f"{bridge.url}/healthz").status_code == 200


def test_a_bug_while_a_pulled_message_is_handled_gives_the_message_back(
    jobs: JobSystem, flux_server: LocalTritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never acked: an ack would lose the job (its session left `queued` for good)."""
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        handler = bridge.bridge.handler
        handle, handled = handler.handle, []

        def a_bug_the_first_time(delivery: Delivery) -> Outcome:
            handled.append(delivery.message_id)
            if len(handled) == 1:
                raise RuntimeError("a bug in the handler")
            return handle(delivery)

        monkeypatch.setattr(handler, "handle", a_bug_the_first_time)
        message_id = jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "done", document
    assert handled == [message_id, message_id], "the same message, given back and delivered again"


def test_a_message_whose_job_thread_cannot_start_is_given_back_at_once(
    jobs: JobSystem, flux_server: LocalTritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process at its limit of threads: the message is given back and delivered again at once, not held
    (its lease kept alive) until its lease ends, minutes as shipped."""
    refused: list[str] = []
    start = threading.Thread.start

    def no_thread_the_first_time(thread: threading.Thread) -> None:
        if thread.name.startswith("job-") and not refused:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", no_thread_the_first_time)
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(flux_server.grpc_url)):
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        document = jobs.wait_for(user, session, is_terminal, timeout_s=30)
    assert document["status"] == "done", document
    assert refused == ["job-bulk"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the bug, told
def test_a_pull_thread_that_dies_of_a_bug_fails_the_liveness_check(
    jobs: JobSystem, flux_server: LocalTritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process lived on without it: the bridge pulled nothing while /healthz answered ok, so no
    liveness probe ever restarted it. Now the platform restarts it (the message is pulled by another)."""

    def a_bug(*_: object) -> int:
        raise KeyError("a bug in the pull")

    monkeypatch.setattr(leases.Leases, "wait_for_room", a_bug)
    with running_bridge(jobs.settings(flux_server.grpc_url)) as bridge:
        wait_until(lambda: httpx.get(f"{bridge.url}/healthz").status_code == 503)
        assert "pull-bulk (KeyError: 'a bug in the pull')" in httpx.get(f"{bridge.url}/healthz").text
