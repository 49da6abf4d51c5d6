"""Bearer-token verification and the role matrix (no Falcon here).

Keycloak issues RS256 or ES256 JWTs; we verify them locally against the
realm's JWKS, which ``JWKSCache`` fetches over HTTP, caches by ``kid`` and
refreshes at most once per ``min_refresh_interval`` (a flood of tokens with
random ``kid``s must not become a flood of requests to Keycloak).
``TokenVerifier.verify`` turns an ``Authorization`` header value into an
``Identity`` or raises ``AuthError``, whose message is safe to send back to
the client (it never contains the token). ``authorize`` and ``visible``
implement the role matrix of docs/security.md; the Falcon middleware in
``api/`` calls them.

The only I/O is ``fetch_jwks`` (one HTTP GET), and it is injectable.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import WfmError

if TYPE_CHECKING:
    import jwt

log = logging.getLogger("wfm_orchestrator.auth")

# --- constants --------------------------------------------------------------

ALGORITHMS = ("RS256", "ES256")  # what Keycloak signs with; nothing else is accepted
_KEY_TYPES = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}
MAX_TOKEN_BYTES = 16 * 1024
LEEWAY = 30  # seconds of clock skew tolerated on exp, nbf and iat
MAX_JWKS_BYTES = 1024 * 1024

ROLES = ("session-manager", "burst-buffer", "datamover", "metrics", "admin")
ACTIONS = (
    "reserve",
    "service.read",
    "service.release",
    "allocation",
    "jobservice",
    "resources",
    "config.read",
    "step.launch",
    "step.read",
    "step.abort",
    "step.progress",
    "metrics",
    "overview",
    "admin.read",
    "datanode.drain",
    "config.reload",
)

# A JWS in compact form: three base64url segments without padding. The
# signature may be empty only so that alg=none is refused by name below.
_COMPACT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Keycloak's kids are base64url thumbprints; no '/', no leading '.', bounded.
_KID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,254}")
_HOST_RE = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_PATH_PREFIX_RE = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9_.~-]*)*/?")


# --- errors -----------------------------------------------------------------


class AuthError(WfmError):
    """A request is not authenticated (HTTP 401).

    ``reason`` is a short stable code (``expired``, ``bad_issuer``, ...) for
    logs and tests; the message says what is wrong in words a client may
    see. Neither ever contains the token.
    """

    status = 401

    def __init__(self, reason: str, message: str):
        self.reason = reason
        self.message = message
        super().__init__(message)

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` value of the 401 (RFC 6750 §3)."""
        if self.reason == "missing":
            return 'Bearer realm="wfm-orchestrator"'
        text = self.message.replace("\\", "").replace('"', "'")
        return f'Bearer realm="wfm-orchestrator", error="invalid_token", error_description="{text}"'


class KeysUnavailable(AuthError):
    """No signing key was ever obtained from Keycloak (HTTP 503, not the client's fault)."""

    status = 503


class KeysNotCached(WfmError):
    """Verifying needs a fetch of the signing keys, and the caller asked not to fetch.

    Raised before anything changed: the caller may verify again where
    blocking is allowed (api/auth.py hands the request to a worker thread).
    """


class InvalidKeycloakServer(WfmError, ValueError):
    """``keycloak_server`` is neither a host, an IP address nor a base URL."""

    def __init__(self, value: object, reason: str):
        self.value = value
        super().__init__(
            f"keycloak_server = {value!r}: {reason} (expected a host name such as "
            "keycloak.example.org, an IP address, or a base URL such as "
            "https://keycloak.example.org:8443 or https://host/auth)"
        )


# --- where Keycloak is ------------------------------------------------------


def keycloak_base(server: str) -> str:
    """The base URL of Keycloak from the ``keycloak_server`` setting.

    A bare host name or IP address means https on the default port
    (``https://<host>``, IPv6 in brackets); a URL ``http(s)://host[:port][/prefix]``
    is kept, without a trailing slash (``/auth`` is the prefix of Keycloak < 17).
    """
    if not isinstance(server, str):
        raise InvalidKeycloakServer(server, "not a string")
    value = server.strip()
    if not value:
        raise InvalidKeycloakServer(server, "empty")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise InvalidKeycloakServer(server, "contains spaces or non-ASCII characters")

    if "://" not in value:
        return "https://" + _check_host(server, value, bare=True)

    try:
        parts = urlsplit(value)
    except ValueError as e:  # e.g. an invalid IPv6 literal in brackets
        raise InvalidKeycloakServer(server, str(e)) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidKeycloakServer(server, "the scheme must be http or https")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise InvalidKeycloakServer(server, "a query or fragment is not allowed")
    if "@" in parts.netloc:
        raise InvalidKeycloakServer(server, "user information is not allowed")
    host, port = parts.netloc, ""
    m = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(.*))?", parts.netloc)
    if m:
        host, port = m.group(1), m.group(2)
    host = _check_host(server, host, bare=False)
    if port is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
            raise InvalidKeycloakServer(server, f"invalid port {port!r}")
        host = f"{host}:{int(port)}"
    path = parts.path
    if not _PATH_PREFIX_RE.fullmatch(path) or any(
        seg in (".", "..") for seg in path.split("/")
    ):
        raise InvalidKeycloakServer(server, f"invalid path prefix {path!r}")
    return f"{parts.scheme.lower()}://{host}{path.rstrip('/')}"


def _check_host(server: str, host: str, *, bare: bool) -> str:
    """A host name, an IPv4 address or an IPv6 address (returned in brackets)."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise InvalidKeycloakServer(server, f"invalid IPv6 address {host!r}") from None
    if ":" in host:
        if bare:
            try:
                return f"[{ipaddress.IPv6Address(host).compressed}]"
            except ValueError:
                raise InvalidKeycloakServer(
                    server, "to give a port, write a URL (https://host:port)"
                ) from None
        raise InvalidKeycloakServer(server, f"invalid host {host!r}")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise InvalidKeycloakServer(server, f"invalid IPv4 address {host!r}") from None
    if not _HOST_RE.fullmatch(host):
        raise InvalidKeycloakServer(server, f"invalid host name {host!r}")
    return host


def issuer_url(base: str, realm: str) -> str:
    """The ``iss`` Keycloak writes into the realm's tokens."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", realm) or realm in (".", ".."):
        raise InvalidKeycloakServer(realm, "invalid realm name")
    return f"{base}/realms/{realm}"


def jwks_url(issuer: str) -> str:
    return f"{issuer}/protocol/openid-connect/certs"


# --- the key cache ----------------------------------------------------------


Fetch = Callable[[str, float], Any]


def fetch_jwks(url: str, timeout: float) -> Any:
    """GET the JWK Set (JSON), at most MAX_JWKS_BYTES, no redirects."""
    import requests

    with requests.get(url, timeout=timeout, allow_redirects=False, stream=True,
                      headers={"Accept": "application/json"}) as resp:
        resp.raise_for_status()
        body = b""
        for chunk in resp.iter_content(64 * 1024):
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
    return json.loads(body)


class JWKSCache:
    """The realm's signing keys by ``kid``, refreshed on demand and rate-limited.

    * an unknown ``kid`` triggers a fetch (key rotation), but at most one
      fetch (successful or not) per ``min_refresh_interval`` seconds;
    * the set is refetched when older than ``max_age`` seconds, so a key
      removed from Keycloak is refused within ``max_age`` (plus at most one
      ``min_refresh_interval`` if the previous attempt was recent);
    * when a fetch fails the keys already held keep working;
    * one fetch at a time; threads needing only a cached key never wait for it.
    """

    def __init__(self, url: str, fetch: Fetch = fetch_jwks, *,
                 clock: Callable[[], float] = time.monotonic,
                 min_refresh_interval: float = 60.0, max_age: float = 300.0,
                 timeout: float = 5.0):
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self.min_refresh_interval = min_refresh_interval
        self.max_age = max_age
        self.timeout = timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()  # guards the fields above
        self._fetch_lock = threading.Lock()  # one fetch at a time
        self.fetches = 0  # attempts, for tests and metrics

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self.max_age

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.min_refresh_interval

    def get(self, kid: str, fetch: bool = True) -> jwt.PyJWK:
        """The key ``kid``; AuthError if Keycloak does not (or no longer) publish it.

        With ``fetch=False``, KeysNotCached instead of fetching (or refreshing).
        """
        with self._lock:
            key = self._keys.get(kid)
            if key is not None and not self._stale(self._clock()):
                return key
        if key is not None:
            # Known key, old set: refresh unless someone already is; never wait for it.
            if not self._fetch_lock.acquire(blocking=False):
                return key
            if not fetch:
                self._fetch_lock.release()
                raise KeysNotCached("refresh of the identity provider's keys")
        else:
            if not fetch:
                raise KeysNotCached("fetch of the identity provider's keys")
            self._fetch_lock.acquire()
        try:
            with self._lock:
                now = self._clock()
                key = self._keys.get(kid)
                if key is not None and not self._stale(now):
                    return key  # another thread refreshed meanwhile
                if not self._may_fetch(now):
                    return self._known(kid)
                self._attempted_at = now
                self.fetches += 1
            self._refresh(now)
            with self._lock:
                return self._known(kid)
        finally:
            self._fetch_lock.release()

    def _known(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._fetched_at is None:
            raise KeysUnavailable("keys_unavailable",
                                  "the signing keys of the identity provider are unavailable")
        raise AuthError("unknown_key", "the token is signed with an unknown key")

    def _refresh(self, now: float) -> None:
        try:
            keys = parse_jwks(self._fetch(self.url, self.timeout))
        except Exception as e:  # noqa: BLE001 - any failure keeps the cached keys
            log.warning("JWKS %s: fetch failed, keeping %d cached key(s): %s",
                        self.url, len(self._keys), e)
            return
        with self._lock:
            added = keys.keys() - self._keys.keys()
            removed = self._keys.keys() - keys.keys()
            self._keys = keys
            self._fetched_at = now
        if added or removed:
            log.info("JWKS %s: %d key(s); added %s, removed %s", self.url, len(keys),
                     sorted(added) or "-", sorted(removed) or "-")


def parse_jwks(data: Any) -> dict[str, jwt.PyJWK]:
    """The signature keys of a JWK Set by kid; other keys (``use=enc``, other types) skipped."""
    import jwt  # PyJWT and its crypto (~30 ms) only with auth = keycloak

    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set (no 'keys' list)")
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        alg = jwk.get("alg")
        if alg is None:
            alg = next((a for a, (kty, crv) in _KEY_TYPES.items()
                        if jwk.get("kty") == kty and jwk.get("crv") == crv), None)
        if alg not in ALGORITHMS:
            continue
        kty, crv = _KEY_TYPES[alg]
        if jwk.get("kty") != kty or jwk.get("crv") != crv:
            continue  # e.g. an ES256 label on a P-384 key
        try:
            keys[kid] = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            log.warning("JWKS: key %s unusable: %s", kid, e)
    return keys


# --- identities -------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who sent a request: his user name, orchestrator roles and token subject."""

    user: str
    roles: frozenset[str]
    subject: str

    def has(self, role: str) -> bool:
        """True if the identity holds ``role``; ``admin`` holds every role."""
        return role in self.roles or "admin" in self.roles


ANONYMOUS_ADMIN = Identity("anonymous", frozenset({"admin"}), "")
"""What every request is when ``auth = none`` (allowed on a loopback listener only)."""


def role_names(roles_config: Mapping[str, str] | None) -> dict[str, str]:
    """orchestrator role -> role name in the token; unnamed roles keep their own name."""
    names = {role: role for role in ROLES}
    for role, name in (roles_config or {}).items():
        if role not in ROLES:
            raise ValueError(f"unknown orchestrator role {role!r} (valid: {', '.join(ROLES)})")
        if not isinstance(name, str) or not name:
            raise ValueError(f"role {role}: the token role name must be a non-empty string")
        names[role] = name
    return names


# --- the verifier -----------------------------------------------------------


class TokenVerifier:
    """``verify(Authorization header value) -> Identity`` for one Keycloak realm."""

    def __init__(self, server: str, realm: str, audience: str,
                 roles_config: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time, *,
                 jwks: JWKSCache | None = None, fetch: Fetch = fetch_jwks):
        if not audience:
            raise ValueError("keycloak_audience must not be empty")
        self.issuer = issuer_url(keycloak_base(server), realm)
        self.audience = audience
        self.role_names = role_names(roles_config)
        self._clock = clock
        self.jwks = jwks if jwks is not None else JWKSCache(jwks_url(self.issuer), fetch)

    def verify(self, authorization: str | None, fetch: bool = True) -> Identity:
        """The identity of a bearer token; ``fetch=False``: KeysNotCached rather than fetch."""
        token = _bearer_token(authorization)
        header = _token_header(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError("bad_algorithm",
                            f"the token must be signed with {' or '.join(ALGORITHMS)}")
        if "crit" in header:
            raise AuthError("unsupported_crit", "the token has critical header "
                                                "extensions this server does not support")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise AuthError("bad_kid", "the token's key id (kid) is missing or invalid")
        key = self.jwks.get(kid, fetch)
        if key.algorithm_name != alg:
            raise AuthError("bad_algorithm", "the token's algorithm does not match its key")
        claims = self._decode(token, key, alg)
        self._check_times(claims)
        return self._identity(claims)

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        import jwt  # see parse_jwks
        from jwt.exceptions import InvalidJTIError, InvalidSubjectError

        try:
            return jwt.decode(
                token, key.key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                # Times are checked in _check_times against our (injectable) clock.
                options={"require": ["exp", "iss", "aud"], "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False, "verify_signature": True},
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "the token's signature is invalid") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"missing_{e.claim}",
                            f"the token has no '{e.claim}' claim") from None
        except jwt.InvalidIssuerError:
            raise AuthError("bad_issuer", "the token was not issued by the configured "
                                          f"realm ({self.issuer})") from None
        except jwt.InvalidAudienceError:
            raise AuthError("bad_audience", "the token is not meant for this server "
                                            f"(audience {self.audience!r})") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("bad_algorithm", "the token's algorithm is not accepted") from None
        except jwt.DecodeError:
            raise AuthError("malformed", "the token is not a well-formed JWT") from None
        # PyJWT >= 2.10 checks that sub and jti are strings (pyproject.toml pins it).
        except InvalidSubjectError:
            raise AuthError("malformed", "the token's 'sub' claim is not a string") from None
        except InvalidJTIError:
            raise AuthError("malformed", "the token's 'jti' claim is not a string") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise AuthError("invalid", "the token is invalid") from None

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        for name in ("exp", "nbf", "iat"):
            v = claims.get(name)
            if name in claims and (isinstance(v, bool) or not isinstance(v, int | float)
                                   or not math.isfinite(v)):
                raise AuthError("malformed", f"the token's '{name}' claim is not a number")
        if claims["exp"] <= now - LEEWAY:
            raise AuthError("expired", "the token has expired")
        if "nbf" in claims and claims["nbf"] > now + LEEWAY:
            raise AuthError("not_yet_valid", "the token is not valid yet (nbf)")
        if "iat" in claims and claims["iat"] > now + LEEWAY:
            raise AuthError("not_yet_valid", "the token is issued in the future (iat)")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        typ = claims.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() != "bearer"):
            # Keycloak's ID and refresh tokens carry typ ID / Refresh: not access tokens.
            raise AuthError("not_access_token", "the token is not an access token")
        user = claims.get("preferred_username")
        if not isinstance(user, str) or not _USER_RE.fullmatch(user):
            raise AuthError("bad_user", "the token has no valid 'preferred_username' claim")
        sub = claims.get("sub", "")  # a string: checked by jwt.decode
        granted = _token_roles(claims, self.audience)
        roles = frozenset(role for role, name in self.role_names.items() if name in granted)
        return Identity(user, roles, sub)


def _bearer_token(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise AuthError("missing", "authentication required: send 'Authorization: Bearer <token>'")
    if len(authorization) > MAX_TOKEN_BYTES + len("Bearer "):
        raise AuthError("too_large", f"the token is larger than {MAX_TOKEN_BYTES} bytes")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("not_bearer", "only 'Authorization: Bearer <token>' is accepted")
    token = token.strip(" ")
    if not _COMPACT_RE.fullmatch(token):
        raise AuthError("malformed", "the token is not a well-formed JWT (base64url, 3 parts)")
    return token


def _token_header(token: str) -> dict[str, Any]:
    """The JOSE header, decoded here so every header problem gets its own reason."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise AuthError("malformed", "the token is not a well-formed JWT") from None
    if not isinstance(header, dict):
        raise AuthError("malformed", "the token's header is not a JSON object")
    return header


def _token_roles(claims: dict[str, Any], client: str) -> set[str]:
    """Realm roles plus the roles of ``client`` (the audience) in the token."""
    found: set[str] = set()

    def add(container: Any) -> None:
        if isinstance(container, dict) and isinstance(container.get("roles"), list):
            found.update(r for r in container["roles"] if isinstance(r, str))

    add(claims.get("realm_access"))
    resource_access = claims.get("resource_access")
    if isinstance(resource_access, dict):
        add(resource_access.get(client))
    return found


# --- authorization ----------------------------------------------------------

# action -> roles allowed to perform it on any user's items ("admin" implies all).
_MATRIX: dict[str, frozenset[str]] = {
    "reserve": frozenset({"session-manager"}),
    "service.read": frozenset({"session-manager", "burst-buffer"}),
    # The plugin stops a service for a destroy_persistent job: only with the job's uid,
    # and only that uid's user's service (api/service_status.py Release, binding.py).
    "service.release": frozenset({"session-manager", "burst-buffer"}),
    "allocation": frozenset({"burst-buffer"}),
    # A job's own services (#18): reserved and released for that job only, which the
    # orchestrator checks with Slurm (job_services.py).
    "jobservice": frozenset({"burst-buffer"}),
    "resources": frozenset(),
    "config.read": frozenset(),  # open to every authenticated identity, see below
    "step.launch": frozenset({"session-manager"}),
    "step.read": frozenset({"session-manager"}),
    "step.abort": frozenset({"session-manager"}),
    "step.progress": frozenset({"datamover"}),
    "metrics": frozenset({"metrics"}),  # GET /metrics: a Prometheus scraper's token
    "overview": frozenset(),  # GET /ui/overview: every user's services and steps, admin only
    "admin.read": frozenset(),  # GET /admin/datanodes, /admin/reservations: admin only
    "datanode.drain": frozenset(),  # POST /admin/datanodes/{name}/drain|resume: admin only
    "config.reload": frozenset(),  # POST /admin/reload: admin only
}
_ANY_AUTHENTICATED = frozenset({"config.read"})
_OWNER_MAY = frozenset({"service.read", "step.read"})


def authorize(identity: Identity, action: str, owner: str | None = None) -> bool:
    """May ``identity`` perform ``action`` on an item owned by ``owner``?

    ``owner=None`` asks about items of any owner; an ordinary user then gets
    False for ``service.read`` and ``step.read``: list endpoints are open to
    every authenticated user and filter their items with ``visible``.
    """
    if action not in _MATRIX:
        raise ValueError(f"unknown action {action!r} (valid: {', '.join(ACTIONS)})")
    if "admin" in identity.roles or action in _ANY_AUTHENTICATED:
        return True
    if any(role in identity.roles for role in _MATRIX[action]):
        return True
    return action in _OWNER_MAY and owner is not None and owner == identity.user


def visible(identity: Identity, owner: str, action: str = "service.read") -> bool:
    """Does an item of ``owner`` appear in a list ``identity`` asked for?

    ``action`` is the read action of the list (``service.read`` or ``step.read``).
    """
    return authorize(identity, action, owner)
