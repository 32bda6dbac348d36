"""A local stand-in for Google's token signing: an RSA key, its certificate over HTTP, signed tokens."""

import datetime
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

AUDIENCE = "https://bridge.example.run.app/push"
SERVICE_ACCOUNT = "pubsub-push@fluxfill-test.iam.gserviceaccount.com"


@dataclass(frozen=True)
class SigningKey:
    """An RSA key with a key id and a self-signed certificate in PEM."""

    key_id: str
    private_pem: bytes
    certificate_pem: str

    @classmethod
    def generate(cls, key_id: str) -> "SigningKey":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key_id)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(key_id, private_pem, certificate.public_bytes(serialization.Encoding.PEM).decode())

    def token(self, **overrides: Any) -> str:
        """A push token as Google signs it; keyword arguments replace claims."""
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "email": SERVICE_ACCOUNT,
            "email_verified": True,
            "sub": "1234567890",
            "iat": now,
            "exp": now + 600,
            **overrides,
        }
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=self.key_id)
        return jwt.encode(signer, claims).decode()


@dataclass
class CertificateServer:
    """What the certificate endpoint was asked, and how it answers."""

    url: str = ""
    requests: int = 0
    delay_s: float = 0.0
    cache_control: str = "public, max-age=300"
    failing: bool = False


@contextmanager
def certificate_endpoint(*keys: SigningKey) -> Iterator[str]:
    """Serve {key id: certificate PEM} as Google's v1 certs endpoint does; yields its URL."""
    with certificate_server(*keys) as server:
        yield server.url


@contextmanager
def certificate_server(*keys: SigningKey) -> Iterator[CertificateServer]:
    """The certificate endpoint, with its request count, a delay, its Cache-Control and failure switchable."""
    body = json.dumps({key.key_id: key.certificate_pem for key in keys}).encode()
    state = CertificateServer()

    class Certificates(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            time.sleep(state.delay_s)
            if state.failing:
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", state.cache_control)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certificates)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/oauth2/v1/certs"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
