"""A stand-in Keycloak for token tests: real keys, a JWKS served over real HTTP on loopback.

* ``KEYS``: an RSA 2048 key and an EC P-256 key generated once per test run;
* ``JWKSServer``: ``http.server`` in a thread on 127.0.0.1 serving the realm's
  ``/realms/<realm>/protocol/openid-connect/certs``, counting fetches; keys
  can be added (rotation) and removed, and the server stopped (Keycloak down);
* ``TokenFactory``: Keycloak-shaped access tokens, plus raw tokens with any
  header and signature for the hostile cases.

Its fixtures (``jwks_server``, started and stopped after the test, and ``tokens``) are in
tests/unit/conftest.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REALM = "iosea"
AUDIENCE = "wfm-orchestrator"
DROP = object()  # a claim override that removes the claim


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class KeyPair:
    """A private key, its algorithm and its public JWK."""

    def __init__(self, kid: str, alg: str, private: Any):
        self.kid = kid
        self.alg = alg
        self.private = private
        self.public = private.public_key()
        cls = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        self.jwk = {**cls.to_jwk(self.public, as_dict=True), "kid": kid, "alg": alg,
                    "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    def renamed(self, kid: str) -> KeyPair:
        return KeyPair(kid, self.alg, self.private)


_cache: dict[str, Any] = {}


def new_rsa(kid: str) -> KeyPair:
    return KeyPair(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def new_ec(kid: str) -> KeyPair:
    return KeyPair(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def keys() -> tuple[KeyPair, KeyPair]:
    """(RSA, EC) key pairs, generated once per test run."""
    if not _cache:
        _cache["rsa"] = new_rsa("rsa-key-1")
        _cache["ec"] = new_ec("ec-key-1")
    return _cache["rsa"], _cache["ec"]


class JWKSServer:
    """A realm's JWKS over HTTP on 127.0.0.1 (``base_url`` is the keycloak_server value)."""

    def __init__(self, realm: str = REALM):
        self.realm = realm
        self.keys: dict[str, KeyPair] = {}
        self.fetches = 0
        self.status = 200
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                with owner._lock:
                    owner.fetches += 1
                    body = json.dumps({"keys": [k.jwk for k in owner.keys.values()]}).encode()
                    status = owner.status
                if self.path != owner.path:
                    status, body = 404, b'{"error":"not found"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the test output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.issuer = f"{self.base_url}/realms/{realm}"
        self.path = f"/realms/{realm}/protocol/openid-connect/certs"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        self.running = True

    def add(self, *pairs: KeyPair) -> None:
        with self._lock:
            for pair in pairs:
                self.keys[pair.kid] = pair

    def remove(self, kid: str) -> None:
        with self._lock:
            del self.keys[kid]

    def stop(self) -> None:
        """Keycloak down: the port is closed (connections refused)."""
        if self.running:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self.running = False


class FakeClock:
    """A clock tests move by hand (``clock.now += 61``)."""

    def __init__(self, now: float | None = None):
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


class TokenFactory:
    """Keycloak-shaped access tokens for one realm."""

    def __init__(self, issuer: str, clock: Callable[[], float] = time.time,
                 audience: str = AUDIENCE):
        self.issuer = issuer
        self.clock = clock
        self.audience = audience

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        c: dict[str, Any] = {
            "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()),
            "iss": self.issuer, "aud": [self.audience, "account"],
            "sub": "5f0a1c1e-0000-4000-8000-000000000001", "typ": "Bearer",
            "azp": "wfm-client", "preferred_username": "alice",
            "realm_access": {"roles": ["offline_access", "uma_authorization"]},
            "resource_access": {"account": {"roles": ["manage-account"]}},
        }
        for k, v in overrides.items():
            if v is DROP:
                c.pop(k, None)
            else:
                c[k] = v
        return c

    def make(self, pair: KeyPair, headers: dict[str, Any] | None = None,
             **overrides: Any) -> str:
        """A token signed by ``pair`` (kid = pair.kid unless ``headers`` says otherwise)."""
        return jwt.encode(self.claims(**overrides), pair.private, algorithm=pair.alg,
                          headers={"kid": pair.kid, **(headers or {})})

    def raw(self, header: dict[str, Any], claims: dict[str, Any],
            sign: Callable[[bytes], bytes] = lambda data: b"") -> str:
        """A token with exactly this header and a signature from ``sign(signing_input)``."""
        signing_input = (b64url(json.dumps(header).encode()) + "."
                         + b64url(json.dumps(claims).encode())).encode()
        return signing_input.decode() + "." + b64url(sign(signing_input))

    def hs256_with(self, secret: bytes, kid: str, **overrides: Any) -> str:
        """HS256 with ``secret`` as the HMAC key (the key-confusion attack)."""
        return self.raw({"alg": "HS256", "typ": "JWT", "kid": kid}, self.claims(**overrides),
                        lambda data: hmac.new(secret, data, hashlib.sha256).digest())
