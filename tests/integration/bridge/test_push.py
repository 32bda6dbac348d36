"""The bridge in push mode: Pub/Sub's push to /push, OIDC verification, readiness."""

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from chaos.router import running_router
from fluxfill.bridge.http_app import MAX_PUSH_BODY_BYTES, MAX_PUSHES_WAITING
from fluxfill.bridge.oidc import (
    FAILURE_BACKOFF_S,
    REFETCH_INTERVAL_S,
    CertificatesUnavailableError,
    PushAuthError,
    PushTokenVerifier,
)
from fluxfill.bridge.outcome import Delivery, Outcome
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.client.triton_binary import free_port
from tests.integration.bridge.harness import (
    POLICY_ATTEMPTS,
    JobSystem,
    TcpProxy,
    is_terminal,
    running_bridge,
    wait_until,
)
from tests.integration.bridge.oidc_keys import (
    AUDIENCE,
    SERVICE_ACCOUNT,
    SigningKey,
    certificate_endpoint,
    certificate_server,
)

pytestmark = pytest.mark.integration


def envelope(data: bytes, message_id: str = "push-1") -> dict[str, object]:
    """A push of `data` as Pub/Sub sends it: published now (RFC 3339, UTC as `Z`), as a job the app made its
    session for a moment ago (an older publication than its session's document is a deleted session's)."""
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "publishTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "attributes": {},
        },
        "subscription": "projects/fluxfill-test/subscriptions/push",
    }


def test_pushed_job_is_done_through_the_emulator(jobs: JobSystem, flux_server: LocalTritonServer) -> None:
    user, session = jobs.new_job()
    settings = jobs.settings(flux_server.grpc_url, mode="push", push_auth=False)
    with running_bridge(settings) as bridge:
        jobs.add_push_subscription(f"{bridge.url}/push")
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        document = jobs.wait_for(user, session, is_terminal)
    assert document["status"] == "done"
    assert bridge.counted("done") == 1


def test_a_pushed_job_whose_session_document_comes_late_is_pushed_again_until_it_runs(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Published before the app's write of its document lands: answered 503 (Pub/Sub pushes it again), run
    once the document is there."""
    user, session = jobs.new_job()
    document = jobs.document(user, session)
    document.delete()
    settings = jobs.settings(flux_server.grpc_url, mode="push", push_auth=False, upload_grace_s=60)
    with running_bridge(settings) as bridge:
        jobs.add_push_subscription(f"{bridge.url}/push")
        jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        wait_until(lambda: bridge.counted("retry") >= 1)
        assert not document.get().exists, "nothing written to a missing document"
        document.set({"status": "queued"})
        ended = jobs.wait_for(user, session, is_terminal)
    assert ended["status"] == "done", ended
    assert (bridge.counted("done"), bridge.counted("orphaned")) == (1, 0)


def one_slot_push_settings(jobs: JobSystem, triton: LocalTritonServer, **overrides: Any) -> BridgeSettings:
    """A push bridge (no token checks) that runs one job at a time."""
    return jobs.settings(triton.grpc_url, mode="push", push_auth=False, max_concurrent_jobs=1, **overrides)


def job_envelope(user: str, session: str, message_id: str) -> dict[str, object]:
    """The push envelope of a job for this session, with the job's defaults."""
    return envelope(json.dumps({"userId": user, "sessionId": session}).encode(), message_id)


def test_a_burst_beyond_the_slots_waits_for_them_and_pub_sub_dead_letters_nothing(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Pushes beyond max_concurrent_jobs wait for a slot. Refused at once (429), each spent one of the
    message's delivery attempts: this burst at a one-slot bridge had 3 of its 8 jobs dead-lettered by Pub/Sub,
    never claimed, their sessions left `queued` for good."""
    settings = one_slot_push_settings(jobs, flux_server)
    sessions = [jobs.new_job() for _ in range(8)]
    with running_bridge(settings) as bridge:
        jobs.add_push_subscription(f"{bridge.url}/push", ack_deadline_s=60, policy_attempts=POLICY_ATTEMPTS)
        for user, session in sessions:
            jobs.publish({"userId": user, "sessionId": session, "steps": 8})
        documents = [jobs.wait_for(user, session, is_terminal, timeout_s=90) for user, session in sessions]
        assert [document["status"] for document in documents] == ["done"] * len(sessions)
        assert jobs.dead_letters(expected=1, timeout_s=3) == []
    assert bridge.counted("done") == len(sessions)


def push_holding_the_slot(jobs: JobSystem, url: str, pool: ThreadPoolExecutor) -> Future[httpx.Response]:
    """A push whose job takes a one-slot bridge's slot and keeps it while it waits for its photo, which never
    comes (the bridge's `upload_grace_s`); returns once the job is `processing`."""
    user, session = f"u{uuid.uuid4().hex[:8]}", "s-slow"
    jobs.document(user, session).set({"status": "queued"})
    body = job_envelope(user, session, f"held-{user}")
    pushed = pool.submit(httpx.post, f"{url}/push", json=body, timeout=60)
    jobs.wait_for(user, session, lambda document: document.get("status") == "processing")
    return pushed


def push_job(url: str, user: str, session: str) -> httpx.Response:
    return httpx.post(f"{url}/push", json=job_envelope(user, session, f"p-{session}"), timeout=60)


def test_a_push_finding_no_slot_within_its_wait_is_refused_busy(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    settings = one_slot_push_settings(jobs, flux_server, push_slot_wait_s=0.5, upload_grace_s=5)
    waiting = jobs.new_job()
    with running_bridge(settings) as bridge, ThreadPoolExecutor(max_workers=1) as pool:
        first = push_holding_the_slot(jobs, bridge.url, pool)
        started = time.monotonic()
        second = push_job(bridge.url, *waiting)
        waited = time.monotonic() - started
        assert first.result().status_code == 204
    assert second.status_code == 429
    assert waited >= 0.5
    assert jobs.session(*waiting)["status"] == "queued", "a refused push claims nothing"


def test_a_push_waiting_for_a_slot_when_the_bridge_stops_is_given_back_at_once(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    # Cloud Run SIGKILLs 10 s after SIGTERM: a waiting push must not hold the stop, nor start a job then.
    settings = one_slot_push_settings(jobs, flux_server, upload_grace_s=30, shutdown_grace_s=6)
    waiting = jobs.new_job()
    with running_bridge(settings) as bridge, ThreadPoolExecutor(max_workers=2) as pool:
        held = push_holding_the_slot(jobs, bridge.url, pool)
        second = pool.submit(push_job, bridge.url, *waiting)
        time.sleep(1)  # waiting for the slot
        assert not second.done()
        bridge.service.request_stop()
        # At once (the gate looks at the stop every 0.2 s; 4 s for a loaded machine), not when the running
        # job's grace (6 s) is over and its slot frees.
        answer = second.result(timeout=4)
        bridge.stop(timeout_s=30)
        assert held.result().status_code == 503, "the running job is given back too"
    assert answer.status_code == 503, "given back for another bridge to take"
    assert jobs.session(*waiting)["status"] == "queued"


def test_a_push_coming_while_the_bridge_stops_is_carried_over_on_its_last_deliveries(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """The platform may still route a push to a bridge that is draining. Refused there on one of its
    subscription's last deliveries, it would be dead-lettered by Pub/Sub, never claimed: it is published anew,
    as every other refusal is (it was answered 503 before its envelope was read)."""
    settings = one_slot_push_settings(
        jobs,
        flux_server,
        upload_grace_s=30,
        shutdown_grace_s=6,
        topic=jobs.topic_id,
        subscription_max_delivery_attempts=POLICY_ATTEMPTS,
    )
    on_its_last, early = jobs.new_job(), jobs.new_job()

    def push(url: str, key: tuple[str, str], attempt: int) -> httpx.Response:
        body = job_envelope(*key, f"p-{key[1]}")
        body["deliveryAttempt"] = attempt
        return httpx.post(f"{url}/push", json=body, timeout=30)

    with running_bridge(settings) as bridge, ThreadPoolExecutor(max_workers=1) as pool:
        held = push_holding_the_slot(jobs, bridge.url, pool)  # the drain waits for it
        bridge.service.request_stop()
        answers = {
            "last": push(bridge.url, on_its_last, POLICY_ATTEMPTS),
            "early": push(bridge.url, early, 1),
        }
        bridge.stop(timeout_s=30)
        held.result()
    assert answers["last"].status_code == 204
    assert (answers["early"].status_code, answers["early"].text) == (503, "stopping")
    (copy,) = jobs.pull_now()
    assert json.loads(copy.data) == {"userId": on_its_last[0], "sessionId": on_its_last[1]}
    assert copy.attributes["fluxfillOriginalMessageId"] == f"p-{on_its_last[1]}"
    assert [jobs.session(*key)["status"] for key in (on_its_last, early)] == ["queued", "queued"]


def test_a_message_pushed_again_is_dead_lettered_once(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Redelivery of a poison message (the same message id) is acked again but not dead-lettered again."""
    settings = jobs.settings(flux_server.grpc_url, mode="push", push_auth=False)
    with running_bridge(settings) as bridge:
        statuses = [
            httpx.post(f"{bridge.url}/push", json=envelope(b"{not json", "poison-1")).status_code
            for _ in range(3)
        ]
        dead = jobs.dead_letters(expected=2, timeout_s=5.0)
    assert statuses == [204, 204, 204]
    assert [m.attributes["fluxfillOriginalMessageId"] for m in dead] == ["poison-1"]
    assert bridge.counted("dead_letter") == 3
    ledger = jobs.db.document("fluxfillDeadLetters/poison-1").get().to_dict()
    assert (ledger or {}).get("code") == "malformed_message"


def verified_push_settings(jobs: JobSystem, triton_url: str, certs_url: str) -> BridgeSettings:
    """Push mode checking tokens against the local certificate endpoint at `certs_url`."""
    return jobs.settings(
        triton_url,
        mode="push",
        push_audience=AUDIENCE,
        push_service_account=SERVICE_ACCOUNT,
        oidc_certs_url=certs_url,
    )


@pytest.fixture(scope="module")
def google_key() -> SigningKey:
    return SigningKey.generate("google-key-1")


@pytest.fixture(scope="module")
def stranger_key() -> SigningKey:
    return SigningKey.generate("google-key-1")  # the same key id, another key: a forged signature


def test_push_tokens_are_verified(
    jobs: JobSystem, flux_server: LocalTritonServer, google_key: SigningKey, stranger_key: SigningKey
) -> None:
    user, session = jobs.new_job()
    body = envelope(json.dumps({"userId": user, "sessionId": session, "steps": 2}).encode())
    with certificate_endpoint(google_key) as certs_url:
        settings = verified_push_settings(jobs, flux_server.grpc_url, certs_url)
        with running_bridge(settings) as bridge:

            def post(token: str | None) -> int:
                headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                return httpx.post(f"{bridge.url}/push", json=body, headers=headers, timeout=30).status_code

            refusals = {
                "none": post(None),
                "garbage": post("not-a-jwt"),
                "forged": post(stranger_key.token()),
                "expired": post(google_key.token(iat=1_000_000, exp=1_000_600)),
                "other issuer": post(google_key.token(iss="https://evil.example")),
                "wrong audience": post(google_key.token(aud="https://other.example/push")),
                "wrong account": post(google_key.token(email="someone@evil.example")),
                "unverified email": post(google_key.token(email_verified=False)),
            }
            assert jobs.session(user, session)["status"] == "queued", "a refused push must do no work"
            accepted = post(google_key.token())
    assert refusals == {
        "none": 401,
        "garbage": 401,
        "forged": 401,
        "expired": 401,
        "other issuer": 401,
        "wrong audience": 403,
        "wrong account": 403,
        "unverified email": 403,
    }
    assert accepted == 204
    assert jobs.session(user, session)["status"] == "done"


def test_a_push_whose_token_cannot_be_checked_is_given_back_not_run(
    jobs: JobSystem, flux_server: LocalTritonServer, google_key: SigningKey
) -> None:
    """Google's certificates out of reach: the token can be neither trusted nor refused (a 401 would spend
    the message's delivery attempts on our outage); 503, and Pub/Sub pushes it again later."""
    user, session = jobs.new_job()
    unreachable = f"http://127.0.0.1:{free_port()}/certs"
    with running_bridge(verified_push_settings(jobs, flux_server.grpc_url, unreachable)) as bridge:
        answer = httpx.post(
            f"{bridge.url}/push",
            json=job_envelope(user, session, "p-1"),
            headers={"Authorization": f"Bearer {google_key.token()}"},
            timeout=30,
        )
    assert (answer.status_code, answer.text) == (503, "cannot verify tokens now")
    assert jobs.session(user, session)["status"] == "queued"
    assert bridge.counted("done") == 0


def test_a_body_over_the_limit_is_refused_whether_its_length_is_declared_or_not(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """413 from the Content-Length alone, before a byte of the body is sent; and a chunked body, which
    declares no length, once it passes the limit, not read whole first."""
    settings = jobs.settings(flux_server.grpc_url, mode="push", push_auth=False)
    with running_bridge(settings) as bridge:
        with socket.create_connection(("127.0.0.1", bridge.service.http_port), timeout=10) as connection:
            connection.sendall(
                b"POST /push HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {MAX_PUSH_BODY_BYTES + 1}\r\n\r\n".encode()
            )
            declared = connection.recv(1024)  # the body never comes

        def forty_megabytes() -> Iterator[bytes]:
            for _ in range(40):
                yield b" " * 1_000_000

        streamed = httpx.post(f"{bridge.url}/push", content=forty_megabytes(), timeout=60)
    assert declared.startswith(b"HTTP/1.1 413"), declared
    assert streamed.status_code == 413
    assert "over the limit" in streamed.text


def test_a_bug_in_the_push_is_answered_503_and_the_job_runs_when_pushed_again(
    jobs: JobSystem, flux_server: LocalTritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer is one of the decisions the module lists, a bug's "retry later" 503 included, never a 500
    (Starlette's answer to an exception that escapes); the message comes back and its job runs."""
    user, session = jobs.new_job()
    with running_bridge(jobs.settings(flux_server.grpc_url, mode="push", push_auth=False)) as bridge:
        handler = bridge.bridge.handler
        handle = handler.handle

        def a_bug_the_first_time(delivery: Delivery) -> Outcome:
            monkeypatch.setattr(handler, "handle", handle)
            raise RuntimeError("a bug in the handler")

        monkeypatch.setattr(handler, "handle", a_bug_the_first_time)
        first, again = (push_job(bridge.url, user, session) for _ in range(2))
    assert (first.status_code, first.text) == (503, "retry later")
    assert again.status_code == 204
    assert jobs.session(user, session)["status"] == "done"


def test_push_answers_400_to_a_body_that_is_no_envelope(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    settings = jobs.settings(flux_server.grpc_url, mode="push", push_auth=False)
    with running_bridge(settings) as bridge:
        response = httpx.post(f"{bridge.url}/push", content=b"{}", timeout=10)
        malformed = httpx.post(f"{bridge.url}/push", json=envelope(b"{oops"), timeout=10)
        dead = jobs.dead_letters(expected=1)
    assert response.status_code == 400
    assert "not a Pub/Sub push envelope" in response.text
    assert malformed.status_code == 204, "a malformed job is acked once dead-lettered"
    assert dead[0].attributes["fluxfillErrorCode"] == "malformed_message"


def test_push_answers_503_when_triton_is_not_ready_within_its_wait(jobs: JobSystem) -> None:
    settings = jobs.settings("127.0.0.1:1", mode="push", push_auth=False, push_slot_wait_s=0.5)
    with running_bridge(settings) as bridge:
        started = time.monotonic()
        pushed = httpx.post(f"{bridge.url}/push", json=envelope(b"{}"), timeout=10)
        waited = time.monotonic() - started
        ready = httpx.get(f"{bridge.url}/readyz", timeout=10)
        healthy = httpx.get(f"{bridge.url}/healthz", timeout=10)
        metrics = httpx.get(f"{bridge.url}/metrics", timeout=10)
    assert (pushed.status_code, pushed.text) == (503, "not ready")
    assert waited >= 0.5
    assert ready.status_code == 503
    assert healthy.status_code == 200
    assert "fluxfill_bridge_ready 0.0" in metrics.text


def test_a_push_while_triton_is_down_waits_for_it_and_spends_no_delivery_attempt(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Answered 503 at once, every push while Triton restarted spent one of the message's delivery attempts:
    as deployed (retries 10 s, doubling to 600 s) the minutes a real model's reload takes spent up to 6 of
    the subscription's 10, and a longer outage dead-lettered the job unclaimed, its session left `queued`.
    Now a push waits for the model within `push_slot_wait_s`, as it waits for a slot."""
    proxy = TcpProxy(flux_server.grpc_port)  # down: the bridge's Triton is not there yet
    user, session = jobs.new_job()
    settings = jobs.settings(proxy.url, mode="push", push_auth=False, push_slot_wait_s=60)
    with running_bridge(settings) as bridge, ThreadPoolExecutor(max_workers=1) as pool:
        pushed = pool.submit(push_job, bridge.url, user, session)
        time.sleep(1.5)
        assert not pushed.done(), f"held while Triton is down, not answered: {pushed.result()}"
        proxy.up()
        try:
            answer = pushed.result(timeout=60)
        finally:
            proxy.down()
    assert answer.status_code == 204
    assert jobs.session(user, session)["status"] == "done"


@pytest.mark.parametrize("triton_up", [False, True])
def test_a_push_beyond_those_a_bridge_lets_wait_is_refused_at_once_saying_why(
    jobs: JobSystem, flux_server: LocalTritonServer, triton_up: bool
) -> None:
    """At most MAX_PUSHES_WAITING pushes wait (each holds one of the server's worker threads); the next is
    refused at once: 503 "not ready" while the model is not, 429 "busy" while it is and the slots are taken
    (it was 429 "busy" either way, an outage reported as a lack of capacity)."""
    proxy = TcpProxy(flux_server.grpc_port)
    if triton_up:
        proxy.up()
    settings = jobs.settings(
        proxy.url,
        mode="push",
        push_auth=False,
        push_slot_wait_s=60,
        max_concurrent_jobs=1,
        upload_grace_s=60,
        shutdown_grace_s=1,  # the job holding the slot waits for uploads that never come: not for 10 s more
    )
    try:
        with (
            running_bridge(settings) as bridge,
            ThreadPoolExecutor(max_workers=MAX_PUSHES_WAITING + 1) as pool,
        ):
            entry = bridge.service.http
            if triton_up:
                wait_until(lambda: bridge.bridge.readiness.ready)
                push_holding_the_slot(jobs, bridge.url, pool)
            for n in range(MAX_PUSHES_WAITING):
                pool.submit(push_job, bridge.url, f"u-wait{n}", "s")
            wait_until(lambda: entry.pushes_waiting == MAX_PUSHES_WAITING)
            started = time.monotonic()
            refused = push_job(bridge.url, "u-next", "s")
            assert time.monotonic() - started < 5, "refused at once, not after a wait"
            bridge.stop()  # the waiting pushes are given back at once
    finally:
        proxy.down()
    expected = (429, "busy") if triton_up else (503, "not ready")
    assert (refused.status_code, refused.text) == expected


def test_pushes_one_after_another_beyond_those_let_wait_at_once_are_each_taken(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Each push taken counts down the pushes waiting: a count that only went up refused every push after the
    bridge's sixteenth as busy, for good (copies of a finished job's message here: each answered 204)."""
    user, session = f"u{uuid.uuid4().hex[:8]}", "s-done"
    jobs.document(user, session).set({"status": "done"})
    with running_bridge(jobs.settings(flux_server.grpc_url, mode="push", push_auth=False)) as bridge:
        wait_until(lambda: bridge.bridge.readiness.ready)
        statuses = [push_job(bridge.url, user, session).status_code for _ in range(MAX_PUSHES_WAITING + 4)]
        assert bridge.service.http.pushes_waiting == 0
    assert statuses == [204] * (MAX_PUSHES_WAITING + 4)
    assert bridge.counted("duplicate") == MAX_PUSHES_WAITING + 4


def test_a_push_refused_on_its_last_deliveries_is_carried_over_and_runs_once_the_model_is_back(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    """Triton away for longer than a push may wait: each push is refused, and Pub/Sub dead-letters a message
    refused as often as its subscription allows, the job never claimed, its session left `queued` until
    someone replays it (as deployed, after about 40 minutes of an outage). On its last deliveries the job is
    published anew instead, and runs when the model is back, claimed under its first message's id. Pushed
    through the chaos run's router, which adds the delivery attempt Pub/Sub sends (the emulator does not)."""
    proxy = TcpProxy(flux_server.grpc_port)  # down: Triton unreachable
    user, session = jobs.new_job()
    settings = jobs.settings(
        proxy.url,
        mode="push",
        push_auth=False,
        push_slot_wait_s=0.2,
        topic=jobs.topic_id,
        subscription_max_delivery_attempts=POLICY_ATTEMPTS,
    )
    with running_bridge(settings) as bridge, running_router(lambda: [bridge.service.http_port]) as router:
        jobs.add_push_subscription(f"{router.url}/push", policy_attempts=POLICY_ATTEMPTS)
        first = jobs.publish({"userId": user, "sessionId": session, "steps": 2})
        carried = {"why": "not_ready"}
        wait_until(lambda: bridge.bridge.metrics.sample("fluxfill_bridge_carried_over_total", carried) >= 2)
        assert jobs.session(user, session)["status"] == "queued"
        proxy.up()
        try:
            document = jobs.wait_for(user, session, is_terminal, timeout_s=60)
        finally:
            proxy.down()
        assert jobs.dead_letters(expected=1, timeout_s=3) == [], "Pub/Sub dead-lettered the job"
    assert (document["status"], document["messageId"]) == ("done", first)
    assert bridge.counted("done") == 1


def test_verifier_caches_certificates_for_their_http_lifetime(google_key: SigningKey) -> None:
    now = [0.0]
    with certificate_server(google_key) as server:
        server.cache_control = "public, max-age=100"
        verifier = PushTokenVerifier(AUDIENCE, SERVICE_ACCOUNT, server.url, clock=lambda: now[0])
        verifier.verify(f"Bearer {google_key.token()}")
        now[0] = 99.0
        verifier.verify(f"Bearer {google_key.token()}")
        assert server.requests == 1
        now[0] = 101.0
        verifier.verify(f"Bearer {google_key.token()}")
        assert server.requests == 2


def test_unknown_key_ids_refetch_at_most_once_per_interval(google_key: SigningKey) -> None:
    now = [0.0]
    intruder = SigningKey.generate("unknown-key")
    with certificate_server(google_key) as server:
        verifier = PushTokenVerifier(AUDIENCE, SERVICE_ACCOUNT, server.url, clock=lambda: now[0])
        for _ in range(20):
            with pytest.raises(PushAuthError) as refused:
                verifier.verify(f"Bearer {intruder.token()}")
            assert refused.value.status == 401
            now[0] += 1.0
        assert server.requests == 1, "20 forged key ids within the interval: one fetch, the first one"
        now[0] += REFETCH_INTERVAL_S
        with pytest.raises(PushAuthError):
            verifier.verify(f"Bearer {intruder.token()}")
        assert server.requests == 2


def test_a_failed_certificate_fetch_is_remembered_briefly(google_key: SigningKey) -> None:
    now = [0.0]
    with certificate_server(google_key) as server:
        server.failing = True
        verifier = PushTokenVerifier(AUDIENCE, SERVICE_ACCOUNT, server.url, clock=lambda: now[0])
        for _ in range(5):
            with pytest.raises(CertificatesUnavailableError):
                verifier.verify(f"Bearer {google_key.token()}")
        assert server.requests == 1
        server.failing = False
        now[0] = FAILURE_BACKOFF_S + 1
        assert verifier.verify(f"Bearer {google_key.token()}")["aud"] == AUDIENCE


def test_tokens_allow_a_small_clock_skew(google_key: SigningKey) -> None:
    now = int(time.time())
    with certificate_server(google_key) as server:
        verifier = PushTokenVerifier(AUDIENCE, SERVICE_ACCOUNT, server.url)
        assert verifier.verify(f"Bearer {google_key.token(iat=now - 630, exp=now - 30)}")
        with pytest.raises(PushAuthError):
            verifier.verify(f"Bearer {google_key.token(iat=now - 700, exp=now - 100)}")


def test_forged_tokens_do_not_hold_the_server(
    jobs: JobSystem, flux_server: LocalTritonServer, google_key: SigningKey
) -> None:
    intruders = [SigningKey.generate(f"forged-{n}") for n in range(3)]
    with certificate_server(google_key) as server:
        settings = verified_push_settings(jobs, flux_server.grpc_url, server.url)
        with running_bridge(settings) as bridge:
            server.delay_s = 3.0  # a slow certificate endpoint
            body = envelope(b"{}")

            def forged(key: SigningKey) -> int:
                headers = {"Authorization": f"Bearer {key.token()}"}
                return httpx.post(f"{bridge.url}/push", json=body, headers=headers, timeout=30).status_code

            with ThreadPoolExecutor(3) as pool:
                answers = pool.map(forged, intruders)
                time.sleep(0.5)
                started = time.monotonic()
                health = httpx.get(f"{bridge.url}/healthz", timeout=10)
                health_s = time.monotonic() - started
                statuses = sorted(answers)
    assert health.status_code == 200
    assert health_s < 1.0, f"/healthz waited {health_s:.1f} s behind token checks"
    assert statuses == [401, 401, 401]
    assert server.requests <= 2, "forged key ids must not make the bridge fetch certificates each time"


def test_hostile_envelopes_get_a_decision_and_leave_nothing_in_flight(
    jobs: JobSystem, flux_server: LocalTritonServer
) -> None:
    settings = jobs.settings(flux_server.grpc_url, mode="push", push_auth=False)
    naive_time = envelope(b"{oops", "naive-1")
    naive_time["message"]["publishTime"] = "2026-11-24T08:00:00"  # type: ignore[index]
    huge_data = envelope(b"{" + b"x" * 9_999_000, "huge-1")
    with running_bridge(settings) as bridge:
        post = lambda content: httpx.post(f"{bridge.url}/push", content=content, timeout=60).status_code  # noqa: E731
        statuses = {
            "deep": post(b"[" * 100_000),
            "deep envelope": post(b'{"message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
            "naive publishTime": post(json.dumps(naive_time).encode()),
            "10 MB malformed data": post(json.dumps(huge_data).encode()),
            "40 MB body": post(b" " * 40_000_000),
        }
        dead = jobs.dead_letters(expected=2, timeout_s=15)
        in_flight = bridge.bridge.metrics.sample("fluxfill_bridge_jobs_in_flight")
        health = httpx.get(f"{bridge.url}/healthz", timeout=10).status_code
        stopping = time.monotonic()
        bridge.stop(timeout_s=30)
        stop_s = time.monotonic() - stopping
    assert stop_s < 10, f"push mode took {stop_s:.1f} s to stop: Cloud Run would SIGKILL it"
    assert statuses == {
        "deep": 400,
        "deep envelope": 400,
        "naive publishTime": 204,
        "10 MB malformed data": 204,
        "40 MB body": 413,
    }
    assert in_flight == 0
    assert health == 200
    by_origin = {m.attributes["fluxfillOriginalMessageId"]: m for m in dead}
    assert set(by_origin) == {"naive-1", "huge-1"}
    assert by_origin["huge-1"].attributes["fluxfillTruncatedFromBytes"] == str(len(b"{") + 9_999_000)
    assert len(by_origin["huge-1"].data) < 100_000
