"""Token verification (E1), the JWKS cache (E2), keycloak_base and the role matrix.

The JWKS is served over real HTTP on 127.0.0.1 by tests/jwks_fixture.py:
no other network is used.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from tests.jwks_fixture import (
    AUDIENCE,
    DROP,
    REALM,
    FakeClock,
    JWKSServer,
    TokenFactory,
    b64url,
    keys,
    new_rsa,
)
from wfm_orchestrator.auth import (
    ACTIONS,
    ANONYMOUS_ADMIN,
    MAX_TOKEN_BYTES,
    AuthError,
    Identity,
    InvalidKeycloakServer,
    JWKSCache,
    KeysNotCached,
    KeysUnavailable,
    TokenVerifier,
    authorize,
    jwks_url,
    keycloak_base,
    visible,
)
from wfm_orchestrator.errors import WfmError

RSA, EC = keys()


def refused(verifier: TokenVerifier, token: str, scheme: str = "Bearer ") -> AuthError:
    """Verify and expect a refusal; the message must never contain the token."""
    with pytest.raises(AuthError) as info:
        verifier.verify(scheme + token)
    err = info.value
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in str(err) and part not in err.www_authenticate
    assert err.status == 401
    return err


def flip_bit(token: str) -> str:
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


# --- accepted tokens ----------------------------------------------------------


@pytest.mark.parametrize("pair", [RSA, EC], ids=["RS256", "ES256"])
def test_valid_token_is_accepted_with_user_and_subject(verifier, tokens, pair):
    """A Keycloak-shaped RS256 or ES256 token yields the user name and the subject."""
    ident = verifier.verify("Bearer " + tokens.make(pair))
    assert ident.user == "alice"
    assert ident.subject == "5f0a1c1e-0000-4000-8000-000000000001"
    assert ident.roles == frozenset()


def test_roles_come_from_realm_roles_and_the_audience_clients_roles(verifier, tokens):
    """Realm roles and the audience client's roles count; another client's roles do not."""
    token = tokens.make(
        RSA,
        realm_access={"roles": ["session-manager", "offline_access"]},
        resource_access={AUDIENCE: {"roles": ["datamover"]},
                         "other-client": {"roles": ["admin", "burst-buffer"]}},
    )
    assert verifier.verify("Bearer " + token).roles == {"session-manager", "datamover"}


def test_configured_role_names_map_token_roles_to_orchestrator_roles(jwks_server, tokens):
    """With roles_config, the token's names count and the default names no longer do."""
    v = TokenVerifier(jwks_server.base_url, REALM, AUDIENCE,
                      {"session-manager": "iosea-sm", "burst-buffer": "slurm-bb"})
    token = tokens.make(RSA, realm_access={"roles": ["iosea-sm", "burst-buffer"]},
                        resource_access={AUDIENCE: {"roles": ["slurm-bb", "admin"]}})
    assert v.verify("Bearer " + token).roles == {"session-manager", "burst-buffer", "admin"}


def test_unknown_role_in_roles_config_is_refused(jwks_server):
    """A roles_config key that is not an orchestrator role is a configuration error."""
    with pytest.raises(ValueError, match="unknown orchestrator role"):
        TokenVerifier(jwks_server.base_url, REALM, AUDIENCE, {"superuser": "root"})


def test_audience_may_be_a_plain_string(verifier, tokens):
    """aud may be one string instead of a list."""
    assert verifier.verify("Bearer " + tokens.make(RSA, aud=AUDIENCE)).user == "alice"


def test_scheme_is_case_insensitive(verifier, tokens):
    """'bearer' is the same scheme as 'Bearer' (RFC 7235 §2.1)."""
    assert verifier.verify("bearer " + tokens.make(RSA)).user == "alice"


def test_expiry_and_nbf_within_the_30_s_leeway_are_accepted(verifier, tokens):
    """exp 20 s ago and nbf 20 s ahead are tolerated (clock skew)."""
    now = int(time.time())
    assert verifier.verify("Bearer " + tokens.make(RSA, exp=now - 20, nbf=now + 20))


# --- refused tokens (E1): each with its reason ------------------------------


def test_expired_token_is_refused(verifier, tokens):
    """exp beyond the leeway -> expired."""
    assert refused(verifier, tokens.make(RSA, exp=int(time.time()) - 31)).reason == "expired"


def test_token_without_exp_is_refused(verifier, tokens):
    """exp is required."""
    assert refused(verifier, tokens.make(RSA, exp=DROP)).reason == "missing_exp"


@pytest.mark.parametrize("exp", ["2099-01-01", True, None], ids=str)
def test_non_numeric_exp_is_refused(verifier, tokens, exp):
    """exp must be a number (a string or a boolean would never expire otherwise)."""
    assert refused(verifier, tokens.make(RSA, exp=exp)).reason in ("malformed", "missing_exp")


def test_nbf_in_the_future_is_refused(verifier, tokens):
    """nbf beyond the leeway -> not yet valid."""
    token = tokens.make(RSA, nbf=int(time.time()) + 60)
    assert refused(verifier, token).reason == "not_yet_valid"


def test_iat_in_the_future_is_refused(verifier, tokens):
    """A token issued in the future (beyond the leeway) is refused."""
    token = tokens.make(RSA, iat=int(time.time()) + 3600)
    assert refused(verifier, token).reason == "not_yet_valid"


@pytest.mark.parametrize("suffix", ["", "/", "x", "/../iosea", "2"],
                         ids=["exact-realm-2", "slash", "x", "dotdot", "realm-suffix"])
def test_wrong_issuer_suffix_variants_are_refused(verifier, tokens, jwks_server, suffix):
    """iss must equal the issuer exactly: suffixed variants and other realms are refused."""
    iss = (jwks_server.issuer + "2") if suffix == "" else jwks_server.issuer + suffix
    assert refused(verifier, tokens.make(RSA, iss=iss)).reason == "bad_issuer"


@pytest.mark.parametrize("variant", ["prefix", "upper", "https", "localhost", "missing"])
def test_wrong_issuer_prefix_variants_are_refused(verifier, tokens, jwks_server, variant):
    """A truncated, re-cased, other-scheme, other-host or missing iss is refused."""
    iss = {
        "prefix": jwks_server.issuer[:-1],
        "upper": jwks_server.issuer.replace("realms", "REALMS"),
        "https": jwks_server.issuer.replace("http://", "https://"),
        "localhost": jwks_server.issuer.replace("127.0.0.1", "localhost"),
        "missing": DROP,
    }[variant]
    reason = refused(verifier, tokens.make(RSA, iss=iss)).reason
    assert reason == ("missing_iss" if variant == "missing" else "bad_issuer")


@pytest.mark.parametrize("aud", ["account", ["account", "other"], AUDIENCE + "-x",
                                 AUDIENCE[:-1], [AUDIENCE.upper()], 17],
                         ids=["other", "list", "suffix", "prefix", "case", "number"])
def test_wrong_audience_is_refused(verifier, tokens, aud):
    """aud must contain keycloak_audience exactly (a token for another client is refused)."""
    assert refused(verifier, tokens.make(RSA, aud=aud)).reason == "bad_audience"


@pytest.mark.parametrize("aud", [DROP, [], ""], ids=["absent", "empty-list", "empty"])
def test_missing_audience_is_refused(verifier, tokens, aud):
    """A token without aud is refused."""
    assert refused(verifier, tokens.make(RSA, aud=aud)).reason in ("missing_aud",
                                                                    "bad_audience")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused_without_fetching_keys(verifier, tokens, jwks_server, alg):
    """An unsigned token (alg=none) is refused before any key lookup."""
    token = tokens.raw({"alg": alg, "typ": "JWT", "kid": RSA.kid}, tokens.claims())
    assert refused(verifier, token).reason == "bad_algorithm"
    assert jwks_server.fetches == 0


def test_hs256_signed_with_the_rsa_public_key_is_refused(verifier, tokens, jwks_server):
    """Key confusion: HS256 with the RSA public key's PEM as HMAC secret is refused."""
    verifier.verify("Bearer " + tokens.make(RSA))  # the key is cached: confusion is possible
    for secret in (RSA.public_pem, RSA.public_pem.strip()):
        err = refused(verifier, tokens.hs256_with(secret, RSA.kid))
        assert err.reason == "bad_algorithm"


@pytest.mark.parametrize("alg", ["HS256", "HS512", "RS512", "PS256", "ES384", "EdDSA"])
def test_algorithms_other_than_rs256_and_es256_are_refused(verifier, tokens, alg):
    """Only RS256 and ES256 are accepted."""
    token = tokens.raw({"alg": alg, "kid": RSA.kid}, tokens.claims(), lambda d: b"x" * 64)
    assert refused(verifier, token).reason == "bad_algorithm"


def test_algorithm_must_match_the_keys_type(verifier, tokens):
    """RS256 in the header with the kid of the EC key is refused."""
    token = tokens.make(RSA, headers={"kid": EC.kid})
    assert refused(verifier, token).reason == "bad_algorithm"


def test_unknown_kid_is_refused(verifier, tokens):
    """A kid the realm does not publish is refused."""
    token = tokens.make(new_rsa("stranger"))
    assert refused(verifier, token).reason == "unknown_key"


@pytest.mark.parametrize("kid", ["../rsa-key-1", "../../etc/passwd", "..", "a/b", "rsa key",
                                 "k" * 200, "", 17, None, ["rsa-key-1"], "%2e%2e%2f"])
def test_unsafe_kid_is_refused_without_a_fetch(verifier, tokens, jwks_server, kid):
    """A kid that is not a short plain string ([A-Za-z0-9_.-]) never reaches the key cache."""
    header = {"kid": kid} if kid is not None else {}
    token = tokens.raw({"alg": "RS256", **header}, tokens.claims(), lambda d: b"s" * 256)
    assert refused(verifier, token).reason == "bad_kid"
    assert jwks_server.fetches == 0


@pytest.mark.parametrize("pair", [RSA, EC], ids=["RS256", "ES256"])
def test_flipped_signature_bit_is_refused(verifier, tokens, pair):
    """One bit flipped in the signature -> bad signature."""
    assert refused(verifier, flip_bit(tokens.make(pair))).reason == "bad_signature"


def test_changed_payload_is_refused(verifier, tokens):
    """The payload of a valid token replaced (user changed) -> bad signature."""
    head, _, sig = tokens.make(RSA).split(".")
    forged = tokens.claims(preferred_username="root")
    token = f"{head}.{b64url(json.dumps(forged).encode())}.{sig}"
    assert refused(verifier, token).reason == "bad_signature"


@pytest.mark.parametrize("mangle", [
    lambda t: t.replace(".", "=.", 1),  # padding
    lambda t: t[:10] + "+" + t[11:],  # standard alphabet
    lambda t: t[:10] + "/" + t[11:],
    lambda t: t[:10] + "!" + t[11:],
    lambda t: "a." + t.split(".", 1)[1],  # header of one character: not base64
    lambda t: b64url(b"not json") + "." + t.split(".", 1)[1],
    lambda t: b64url(b"[1, 2]") + "." + t.split(".", 1)[1],
    lambda t: t.rsplit(".", 1)[0],  # two parts
    lambda t: t + ".extra",  # four parts
    lambda t: t.replace(".", ". ", 1),
    lambda t: t.replace(".", "\u00e9", 1),
], ids=["padding", "plus", "slash", "bang", "short-header", "not-json", "json-list",
        "two-parts", "four-parts", "space", "non-ascii"])
def test_bad_base64_or_structure_is_refused(verifier, tokens, mangle):
    """Anything not three base64url segments with a JSON object header is malformed."""
    assert refused(verifier, mangle(tokens.make(RSA))).reason in ("malformed", "not_bearer")


def test_payload_that_is_not_json_is_refused(verifier):
    """A correctly signed payload that is not a JSON object is refused as malformed."""
    signed = jwt.api_jws.encode(b"not json", RSA.private, algorithm="RS256",
                                headers={"kid": RSA.kid})
    assert refused(verifier, signed).reason == "malformed"


@pytest.mark.parametrize("claim", ["sub", "jti"])
@pytest.mark.parametrize("value", [12345, ["alice"], None])
def test_sub_or_jti_that_is_not_a_string_is_refused(verifier, tokens, claim, value):
    """A signed token whose sub or jti is not a string: malformed, the claim named."""
    err = refused(verifier, tokens.make(RSA, **{claim: value}))
    assert err.reason == "malformed" and f"'{claim}'" in str(err)


def test_token_over_16_kib_is_refused_before_parsing(verifier, tokens, jwks_server):
    """A token larger than 16 KiB is refused without decoding or fetching keys."""
    token = tokens.make(RSA, padding="x" * MAX_TOKEN_BYTES)
    assert len(token) > MAX_TOKEN_BYTES
    assert refused(verifier, token).reason == "too_large"
    assert jwks_server.fetches == 0


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["x-custom"], [], "exp"], ids=str)
def test_crit_header_is_refused(verifier, tokens, crit):
    """A token with critical header extensions (we support none) is refused."""
    token = tokens.make(RSA, headers={"crit": crit, "exp": 1, "b64": True, "x-custom": 1})
    assert refused(verifier, token).reason == "unsupported_crit"


@pytest.mark.parametrize("value", ["Basic YWxpY2U6c2VjcmV0", "{token}", "Token {token}",
                                   "Bearer", "Bearer ", "Bearer  {token} x",
                                   "Bearer{token}"],
                         ids=["basic", "bare-token", "token-scheme", "no-token",
                              "empty-token", "trailing-word", "no-space"])
def test_authorization_without_bearer_scheme_is_refused(verifier, tokens, value):
    """Only 'Bearer <JWT>' is accepted."""
    with pytest.raises(AuthError) as info:
        verifier.verify(value.format(token=tokens.make(RSA)))
    assert info.value.reason in ("not_bearer", "malformed")


@pytest.mark.parametrize("value", [None, "", "   "])
def test_absent_authorization_asks_for_credentials(verifier, value):
    """No header -> reason missing, and a challenge without an error code (RFC 6750 §3.1)."""
    with pytest.raises(AuthError) as info:
        verifier.verify(value)
    assert info.value.reason == "missing"
    assert info.value.www_authenticate == 'Bearer realm="wfm-orchestrator"'


def test_id_tokens_are_not_access_tokens(verifier, tokens):
    """Keycloak ID tokens (typ ID) are refused even when aud matches."""
    assert refused(verifier, tokens.make(RSA, typ="ID")).reason == "not_access_token"


@pytest.mark.parametrize("name", [DROP, "", "../x", "a b", 42], ids=str)
def test_token_without_valid_preferred_username_is_refused(verifier, tokens, name):
    """The user name must be present and plain."""
    token = tokens.make(RSA, preferred_username=name)
    assert refused(verifier, token).reason == "bad_user"


def test_auth_error_is_a_wfm_error_with_a_safe_challenge(verifier, tokens):
    """AuthError subclasses WfmError; its WWW-Authenticate names invalid_token."""
    err = refused(verifier, tokens.make(RSA, exp=1))
    assert isinstance(err, WfmError)
    assert err.www_authenticate.startswith('Bearer realm="wfm-orchestrator", '
                                           'error="invalid_token"')


# --- the JWKS cache (E2) ----------------------------------------------------


def cached_verifier(server: JWKSServer, clock: FakeClock) -> TokenVerifier:
    from wfm_orchestrator.auth import issuer_url

    cache = JWKSCache(jwks_url(issuer_url(server.base_url, REALM)), clock=clock)
    return TokenVerifier(server.base_url, REALM, AUDIENCE, jwks=cache)


def test_rotated_in_key_is_accepted_after_one_refresh(jwks_server, tokens):
    """A key Keycloak starts publishing is fetched on its first token (once the interval allows)."""
    clock = FakeClock()
    v = cached_verifier(jwks_server, clock)
    v.verify("Bearer " + tokens.make(RSA))
    assert jwks_server.fetches == 1
    new = new_rsa("rsa-key-2")
    jwks_server.add(new)
    clock.now += 61
    assert v.verify("Bearer " + tokens.make(new)).user == "alice"
    assert jwks_server.fetches == 2
    assert v.verify("Bearer " + tokens.make(new)).user == "alice"
    assert jwks_server.fetches == 2


def test_rotated_in_key_waits_for_the_refresh_interval(jwks_server, tokens):
    """Within 60 s of the last fetch a new kid is refused; right after it, accepted."""
    clock = FakeClock()
    v = cached_verifier(jwks_server, clock)
    v.verify("Bearer " + tokens.make(RSA))
    new = new_rsa("rsa-key-3")
    jwks_server.add(new)
    clock.now += 59
    assert refused(v, tokens.make(new)).reason == "unknown_key"
    clock.now += 1
    assert v.verify("Bearer " + tokens.make(new))
    assert jwks_server.fetches == 2


def test_removed_key_is_refused_within_the_cache_lifetime(jwks_server, tokens):
    """A key Keycloak stops publishing works until the 300 s max age, then is refused."""
    clock = FakeClock()
    v = cached_verifier(jwks_server, clock)
    token = tokens.make(EC, exp=int(time.time()) + 3600)
    v.verify("Bearer " + token)
    jwks_server.remove(EC.kid)
    clock.now += 299
    assert v.verify("Bearer " + token)
    clock.now += 1
    assert refused(v, token).reason == "unknown_key"
    assert jwks_server.fetches == 2


def test_random_kids_cause_at_most_one_fetch_per_interval(jwks_server, tokens):
    """1,000 tokens with random kids over 10 minutes -> at most one fetch per minute."""
    clock = FakeClock()
    v = cached_verifier(jwks_server, clock)
    start = clock.now
    for i in range(1000):
        clock.now = start + i * 0.6  # 1,000 tokens spread over 600 s
        token = tokens.make(RSA, headers={"kid": uuid.uuid4().hex})
        assert refused(v, token).reason == "unknown_key"
    assert jwks_server.fetches <= 600 / 60 + 1


def test_concurrent_random_kids_cause_one_fetch(jwks_server, tokens):
    """1,000 random-kid tokens from 8 threads at once -> a single JWKS fetch."""
    v = TokenVerifier(jwks_server.base_url, REALM, AUDIENCE)
    forged = [tokens.make(RSA, headers={"kid": uuid.uuid4().hex}) for _ in range(1000)]

    def attempt(token: str) -> str:
        try:
            v.verify("Bearer " + token)
        except AuthError as e:
            return e.reason
        return "accepted"

    with ThreadPoolExecutor(8) as pool:
        reasons = set(pool.map(attempt, forged))
    assert reasons == {"unknown_key"}
    assert jwks_server.fetches == 1
    assert v.verify("Bearer " + tokens.make(RSA)).user == "alice"
    assert jwks_server.fetches == 1


def test_cached_keys_keep_working_while_keycloak_is_down(jwks_server, tokens):
    """Keycloak stopped: known keys still verify, past the max age too; unknown kids are 401."""
    clock = FakeClock()
    v = cached_verifier(jwks_server, clock)
    token = tokens.make(RSA, exp=int(time.time()) + 3600)
    v.verify("Bearer " + token)
    jwks_server.stop()
    assert v.verify("Bearer " + token).user == "alice"
    clock.now += 301  # stale: the refetch fails, the cached key stays
    assert v.verify("Bearer " + token).user == "alice"
    assert v.jwks.fetches == 2
    assert refused(v, tokens.make(new_rsa("rsa-key-4"))).reason == "unknown_key"
    assert v.jwks.fetches == 2  # rate-limited: the failed attempt counts
    clock.now += 60
    assert v.verify("Bearer " + token).user == "alice"
    assert v.jwks.fetches == 3


def test_no_keys_ever_fetched_is_a_503_not_a_401():
    """Keycloak down since start: KeysUnavailable (status 503), once per interval."""
    server = JWKSServer()
    server.stop()
    v = TokenVerifier(server.base_url, REALM, AUDIENCE)
    token = TokenFactory(server.issuer).make(RSA)
    for _ in range(3):
        with pytest.raises(KeysUnavailable) as info:
            v.verify("Bearer " + token)
        assert info.value.status == 503
    assert v.jwks.fetches == 1


def test_jwks_keys_for_encryption_or_other_curves_are_ignored():
    """use=enc keys, unknown types and mislabeled curves are not signature keys."""
    from wfm_orchestrator.auth import parse_jwks

    p384 = {**EC.jwk, "kid": "p384", "crv": "P-384"}
    enc = {**RSA.jwk, "kid": "enc", "use": "enc"}
    oct_key = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
    bad_kid = {**RSA.jwk, "kid": "../x"}
    no_alg = {k: v for k, v in EC.jwk.items() if k != "alg"}
    got = parse_jwks({"keys": [RSA.jwk, p384, enc, oct_key, bad_kid, no_alg, "junk"]})
    assert set(got) == {RSA.kid, EC.kid}
    with pytest.raises(ValueError):
        parse_jwks({"no": "keys"})


def test_a_jwks_answer_that_is_not_a_key_set_keeps_the_cached_keys(jwks_server, tokens):
    """A 500 or an HTML page from Keycloak does not wipe the keys."""
    clock = FakeClock()
    v = cached_verifier(jwks_server, clock)
    token = tokens.make(RSA, exp=int(time.time()) + 3600)
    v.verify("Bearer " + token)
    jwks_server.status = 500
    clock.now += 301
    assert v.verify("Bearer " + token).user == "alice"
    assert jwks_server.fetches == 2


# --- keycloak_base ------------------------------------------------------------

BASES = [
    ("keycloak.example.org", "https://keycloak.example.org"),
    ("kc", "https://kc"),
    (" keycloak.example.org ", "https://keycloak.example.org"),
    ("10.1.2.3", "https://10.1.2.3"),
    ("fd00::10", "https://[fd00::10]"),
    ("[fd00::10]", "https://[fd00::10]"),
    ("https://keycloak.example.org", "https://keycloak.example.org"),
    ("https://keycloak.example.org/", "https://keycloak.example.org"),
    ("https://keycloak.example.org:8443", "https://keycloak.example.org:8443"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("https://[fd00::10]:8443", "https://[fd00::10]:8443"),
    ("https://keycloak.example.org/auth", "https://keycloak.example.org/auth"),
    ("https://keycloak.example.org:8443/auth/", "https://keycloak.example.org:8443/auth"),
    ("HTTPS://kc.example.org/sso/auth", "https://kc.example.org/sso/auth"),
]


@pytest.mark.parametrize("server,base", BASES)
def test_keycloak_base_accepts_hosts_addresses_and_urls(server, base):
    """Host names and addresses mean https on the default port; URLs are kept."""
    assert keycloak_base(server) == base


INVALID_BASES = [
    "", "   ", "ftp://kc.example.org", "kc.example.org:8443", "https://",
    "https://kc.example.org:0", "https://kc.example.org:70000", "https://kc.example.org:x",
    "https://user:pw@kc.example.org", "https://kc.example.org/auth?x=1",
    "https://kc.example.org/#frag", "https://kc.example.org/../admin", "https://kc/a/./b",
    "kc_example.org", "-kc.example.org", "300.1.2.3", "https://[fd00::zz]", "fd00::zz::1",
    "kc.example.org/auth", "https://kc example.org", "https://kc.example.org/a b",
    "https://ke\u00ffcloak.org", "javascript:alert(1)", "https://fd00::10",
]


@pytest.mark.parametrize("server", INVALID_BASES)
def test_keycloak_base_refuses_invalid_values(server):
    """Anything else is a clear error naming the value (and a ValueError)."""
    with pytest.raises(InvalidKeycloakServer) as info:
        keycloak_base(server)
    assert isinstance(info.value, ValueError) and "keycloak_server" in str(info.value)


def test_issuer_and_jwks_url_follow_keycloak_layout():
    """issuer = <base>/realms/<realm>; the JWKS lives under protocol/openid-connect/certs."""
    v = TokenVerifier("https://kc.example.org/auth/", "iosea", AUDIENCE)
    assert v.issuer == "https://kc.example.org/auth/realms/iosea"
    assert v.jwks.url == "https://kc.example.org/auth/realms/iosea/protocol/openid-connect/certs"
    with pytest.raises(InvalidKeycloakServer):
        TokenVerifier("kc.example.org", "../master", AUDIENCE)


# --- identities and the role matrix (E3) --------------------------------------


def test_admin_implies_every_role():
    """Identity.has: admin holds every role; others only their own."""
    sm = Identity("sm", frozenset({"session-manager"}), "s")
    assert sm.has("session-manager") and not sm.has("datamover") and not sm.has("admin")
    assert all(ANONYMOUS_ADMIN.has(r) for r in
               ("session-manager", "burst-buffer", "datamover", "admin"))
    assert ANONYMOUS_ADMIN == Identity("anonymous", frozenset({"admin"}), "")


def ident(user: str, *roles: str) -> Identity:
    return Identity(user, frozenset(roles), "sub-" + user)


# Columns: (identity, owner of the item). "owner": alice reads alice's item;
# "other": bob reads alice's item; "no role": carol asks about items of any owner.
COLUMNS = {
    "owner": (ident("alice"), "alice"),
    "other": (ident("bob"), "alice"),
    "no role": (ident("carol"), None),
    "session-manager": (ident("sm", "session-manager"), "alice"),
    "burst-buffer": (ident("slurm", "burst-buffer"), "alice"),
    "datamover": (ident("dm", "datamover"), "alice"),
    "metrics": (ident("prometheus", "metrics"), "alice"),
    "admin": (ident("root", "admin"), "alice"),
}
T, F = True, False
MATRIX = {
    #                   owner other no-role  SM   BB   DM   MX  admin
    "reserve":         (F,    F,    F,       T,   F,   F,   F,  T),
    "service.read":    (T,    F,    F,       T,   T,   F,   F,  T),
    "service.release": (F,    F,    F,       T,   T,   F,   F,  T),
    "allocation":      (F,    F,    F,       F,   T,   F,   F,  T),
    "jobservice":      (F,    F,    F,       F,   T,   F,   F,  T),
    "resources":       (F,    F,    F,       F,   F,   F,   F,  T),
    "config.read":     (T,    T,    T,       T,   T,   T,   T,  T),
    "step.launch":     (F,    F,    F,       T,   F,   F,   F,  T),
    "step.read":       (T,    F,    F,       T,   F,   F,   F,  T),
    "step.abort":      (F,    F,    F,       T,   F,   F,   F,  T),
    "step.progress":   (F,    F,    F,       F,   F,   T,   F,  T),
    "metrics":         (F,    F,    F,       F,   F,   F,   T,  T),
    "overview":        (F,    F,    F,       F,   F,   F,   F,  T),
    "admin.read":      (F,    F,    F,       F,   F,   F,   F,  T),
    "datanode.drain":  (F,    F,    F,       F,   F,   F,   F,  T),
    "config.reload":   (F,    F,    F,       F,   F,   F,   F,  T),
}


def test_matrix_covers_every_action():
    """The table below names every action auth.py knows."""
    assert set(MATRIX) == set(ACTIONS)


@pytest.mark.parametrize("action", list(MATRIX))
@pytest.mark.parametrize("column", list(COLUMNS))
def test_authorization_matrix(action, column):
    """authorize() answers the documented matrix (docs/security.md)."""
    identity, owner = COLUMNS[column]
    expected = MATRIX[action][list(COLUMNS).index(column)]
    assert authorize(identity, action, owner) is expected


def test_owner_sees_only_his_own_items_in_lists():
    """visible(): a plain user sees his own items only; SM and admin see all."""
    items = ["alice", "bob", "alice", "carol"]
    assert [o for o in items if visible(ident("alice"), o)] == ["alice", "alice"]
    assert [o for o in items if visible(ident("dave"), o)] == []
    assert [o for o in items if visible(ident("sm", "session-manager"), o, "step.read")] == items
    assert [o for o in items if visible(ident("bb", "burst-buffer"), o, "step.read")] == []
    assert [o for o in items if visible(ident("bb", "burst-buffer"), o)] == items


def test_unknown_action_is_a_programming_error():
    """A misspelled action raises instead of silently allowing or denying."""
    with pytest.raises(ValueError, match="unknown action"):
        authorize(ANONYMOUS_ADMIN, "service.raed")


def test_asked_not_to_fetch_the_verifier_raises_keys_not_cached(jwks_server, tokens):
    """fetch=False (the event loop): KeysNotCached, before any fetch; cached keys work."""
    clock = FakeClock()
    v = cached_verifier(jwks_server, clock)
    token = "Bearer " + tokens.make(RSA)
    with pytest.raises(KeysNotCached):
        v.verify(token, fetch=False)  # no key yet
    assert jwks_server.fetches == 0
    v.verify(token)  # a worker thread fetches
    assert jwks_server.fetches == 1
    assert v.verify(token, fetch=False).user == "alice"  # cached: served on the loop
    clock.now += 301  # the set is stale: refreshing it is a fetch
    with pytest.raises(KeysNotCached):
        v.verify(token, fetch=False)
    assert jwks_server.fetches == 1
    assert v.verify(token).user == "alice"  # the worker refreshes
    assert jwks_server.fetches == 2
