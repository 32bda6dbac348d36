"""The push path's front: what Cloud Run's router is to the push service, over the fleet's bridge processes.

Pub/Sub pushes every job to one URL; each request is handed to the next live bridge in turn, as Cloud Run
hands requests to its instances (the service runs one job per instance: `containerConcurrency: 1`). A bridge
that dies mid-request, or answers nothing within FORWARD_TIMEOUT_S (SIGSTOPped: a process that hangs), is
what the platform answers for: 503, and Pub/Sub pushes the message again. No bridge up: 503 too.

Each envelope gets the `deliveryAttempt` Pub/Sub puts in a push on a subscription with a dead-letter policy,
which the emulator leaves out: counted here per message id, every push of it (answered or not) one more.
"""

import contextlib
import http.client
import http.server
import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

# Cloud Run's request timeout for the push service is the subscription's ack deadline (600 s there); the
# runs here take seconds, and a bridge SIGSTOPped for 8 s must be waited out, not given up on at once.
FORWARD_TIMEOUT_S = 60.0
# Headers a hop does not pass on (RFC 9110, 7.6.1), Host, which names the router, and Content-Length, which
# is counted again for the body as forwarded (with its delivery attempt).
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "te", "trailer", "content-length"}
)


class PushRouter:
    """Forwards each POST to a live bridge's same path; `ports()`: the bridges' HTTP ports now (0: down)."""

    def __init__(self, ports: Callable[[], Sequence[int]], timeout_s: float = FORWARD_TIMEOUT_S) -> None:
        self._ports = ports
        self._timeout_s = timeout_s
        self._turn = itertools.count()
        self.answers: Counter[int] = Counter()  # the bridges' answers by status
        self.unanswered = 0  # answered 503 for a bridge that was down, died or hung
        self.deliveries: Counter[str] = Counter()  # pushes by message id
        self._lock = threading.Lock()
        router = self

        class Forward(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                status, answer = router.forward(self.path, body, headers)
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass  # one line per push on stderr otherwise

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="push-router", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """The chosen bridge's answer, or 503 where the platform would give one."""
        body = self._counted(body)
        live = [port for port in self._ports() if port]
        if not live:
            return self._unanswered(b"no instance is up")
        port = live[next(self._turn) % len(live)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self._timeout_s)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as error:
            return self._unanswered(f"the instance did not answer: {error}".encode())
        finally:
            connection.close()
        with self._lock:
            self.answers[response.status] += 1
        return response.status, answer

    def _counted(self, body: bytes) -> bytes:
        """The envelope with its message's delivery attempt; a body that is no envelope as it came."""
        try:
            envelope = json.loads(body)
            message_id = str(envelope["message"]["messageId"])
        except (ValueError, KeyError, TypeError):
            return body
        with self._lock:
            self.deliveries[message_id] += 1
            envelope.setdefault("deliveryAttempt", self.deliveries[message_id])
        return json.dumps(envelope).encode()

    def _unanswered(self, reason: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.unanswered += 1
        return 503, reason

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def running_router(
    ports: Callable[[], Sequence[int]], timeout_s: float = FORWARD_TIMEOUT_S
) -> Iterator[PushRouter]:
    """A started router, always stopped at the end."""
    router = PushRouter(ports, timeout_s)
    router.start()
    try:
        yield router
    finally:
        router.stop()
