"""The push chaos run's router: each push to the next live bridge, and 503 where the platform answers."""

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator

import httpx

from chaos.router import running_router


@contextlib.contextmanager
def bridge_stand_in(name: str, delay_s: float = 0.0) -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    """An HTTP server answering every POST 204 with its name, after `delay_s`; (its port, what it got)."""
    received: list[tuple[str, bytes]] = []

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Length", str(len(name)))
            self.end_headers()
            self.wfile.write(name.encode())

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()


def push(url: str, body: bytes) -> tuple[int, bytes]:
    response = httpx.post(url, content=body, timeout=10)
    return response.status_code, response.content


def test_pushes_take_turns_over_the_live_bridges_with_path_and_body_as_sent() -> None:
    with bridge_stand_in("a") as (port_a, got_a), bridge_stand_in("b") as (port_b, got_b):
        ports = [port_a, 0, port_b]  # the middle bridge is down
        with running_router(lambda: ports) as router:
            answers = [push(f"{router.url}/push", b"job %d" % n) for n in range(4)]
    assert answers == [(200, b"a"), (200, b"b"), (200, b"a"), (200, b"b")]
    assert got_a == [("/push", b"job 0"), ("/push", b"job 2")]
    assert got_b == [("/push", b"job 1"), ("/push", b"job 3")]
    assert (router.answers, router.unanswered) == ({200: 4}, 0)


def test_a_bridge_down_dead_or_hung_is_answered_503_as_the_platform_does() -> None:
    with bridge_stand_in("hung", delay_s=2.0) as (hung, _):
        with running_router(lambda: [hung], timeout_s=0.5) as router:
            assert push(f"{router.url}/push", b"x")[0] == 503
        with running_router(lambda: []) as router:
            assert push(f"{router.url}/push", b"x") == (503, b"no instance is up")
    with running_router(lambda: [hung]) as router:  # its server is gone: the connection is refused
        status, reason = push(f"{router.url}/push", b"x")
    assert (status, reason.startswith(b"the instance did not answer")) == (503, True)
    assert router.unanswered == 1


def test_each_envelope_gets_its_message_s_delivery_attempt_as_pub_sub_sets_it() -> None:
    """The emulator leaves `deliveryAttempt` out of a push; Pub/Sub sets it on a subscription with a
    dead-letter policy: every push of a message counts, the ones no bridge answered too."""

    def envelope(message_id: str, **extra: object) -> bytes:
        return json.dumps({"message": {"data": "", "messageId": message_id}, **extra}).encode()

    ports = [0]
    with bridge_stand_in("a") as (port, got), running_router(lambda: ports) as router:
        assert push(f"{router.url}/push", envelope("m1"))[0] == 503  # down: counted all the same
        ports[0] = port
        for body in (
            envelope("m1"),
            envelope("m2"),
            envelope("m1"),
            b"not json",
            envelope("m3", deliveryAttempt=7),
        ):
            push(f"{router.url}/push", body)
    attempts = [json.loads(body).get("deliveryAttempt") if body.startswith(b"{") else body for _, body in got]
    assert attempts == [2, 1, 3, b"not json", 7]
