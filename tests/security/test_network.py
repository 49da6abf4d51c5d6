"""Network clients: HTTP framing, tokens, the slurmrestd link (docs/security.md §2, §7).

alice talks to real ``serve`` processes over real sockets: a smuggled release of bob's
service behind an HTTP/1.0 request with ``Transfer-Encoding`` (the session orchestrator on
8080), forged Keycloak tokens against an orchestrator with ``auth = keycloak`` (its JWKS
served on loopback by tests/jwks_fixture.py), and a plain-HTTP ``slurmrestd_url`` on the
host's network address, where she listens for the SlurmUser token.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading

import pytest

from .conftest import ALICE, BOB, free_port, request, roles, run_serve, unique, write_conf

pytestmark = pytest.mark.integration


# --- HTTP framing -----------------------------------------------------------------------


def raw_exchange(port: int, data: bytes, quiet: float = 2.0) -> tuple[bytes, bool]:
    """Send ``data`` on a new connection: (every byte received, closed by the server)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(quiet)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk


def test_a_release_smuggled_behind_http_1_0_transfer_encoding_never_runs(
        orchestrator, bob_service, bob_things):
    """alice sends ``POST ... HTTP/1.0`` with ``Transfer-Encoding: chunked`` whose chunk is
    ``DELETE /v1.0.0/ephemeralservice/release/<bob's service>``: a proxy that de-chunks
    sees one request, waitress alone would run the DELETE as a second one. The
    orchestrator answers one 400 naming Transfer-Encoding and HTTP/1.1 and closes; the
    DELETE never reaches the application; bob's service is unchanged."""
    before = bob_things()
    victim = bob_service
    hidden = (f"DELETE /v1.0.0/ephemeralservice/release/{victim} HTTP/1.1\r\n"
              "Host: x\r\n\r\n").encode()
    data = (b"POST /v1.0.0/location/list HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(hidden):x}\r\n".encode() + hidden
            + b"\r\n0\r\n\r\n" + hidden)
    raw, closed = raw_exchange(orchestrator_port(orchestrator), data)
    assert closed, "the connection stayed open after the refusal"
    # One answer: nothing pipelined behind it ran.
    assert len(re.findall(rb"^HTTP/1\.[01] \d{3} ", raw, re.M)) == 1, raw
    assert raw.startswith(b"HTTP/1.1 400 ") or raw.startswith(b"HTTP/1.0 400 "), raw[:200]
    assert b"Transfer-Encoding" in raw and b"HTTP/1.1" in raw, raw
    assert not re.search(rf"DELETE /v1\.0\.0/ephemeralservice/release/{victim}",
                         orchestrator.log())
    assert bob_things() == before


def orchestrator_port(orch) -> int:
    return int(orch.url.rsplit(":", 1)[1])


# --- tokens: an orchestrator with auth = keycloak --------------------------------------


def bob_reservation(port: int, tokens, key, name: str) -> dict:
    """bob's reservation as an administrator reads it (the proof it is unchanged)."""
    admin = tokens.make(key, preferred_username="operator", **roles("admin"))
    code, _, answer = request(port, "GET", f"/v1.0.0/ephemeralservice/status/{name}", admin)
    assert code == 200, answer
    return answer


def assert_token_refused(code: int, headers: dict[str, str], reason: str, words: str
                         ) -> None:
    assert code == 401, (code, headers)
    challenge = headers.get("www-authenticate", "")
    assert 'error="invalid_token"' in challenge, challenge
    assert words in challenge or reason in challenge, challenge


def test_a_token_whose_issuer_is_a_prefix_of_ours_is_refused(kc_server, bob_things):
    """alice holds a token signed by a key of the realm's JWKS whose ``iss`` is our issuer
    less its last character (PyJWT 2.10.0 compared by substring, CVE-2024-53861), with the
    admin role: releasing bob's reservation with it is 401, the challenge naming the
    issuer rule; the reservation is unchanged."""
    port, tokens, key, name = kc_server
    before = bob_reservation(port, tokens, key, name), bob_things()
    for forged_iss in (tokens.issuer[:-1], tokens.issuer[:-len("/iosea")] + "/iose"):
        forged = tokens.make(key, iss=forged_iss, preferred_username="alice",
                             **roles("admin"))
        code, headers, _ = request(port, "DELETE", f"/v2.0.0/server/allocation/{name}",
                                   forged)
        assert_token_refused(code, headers, "bad_issuer", "not issued by the configured realm")
    assert (bob_reservation(port, tokens, key, name), bob_things()) == before


def test_alices_pages_of_the_lists_hold_none_of_bobs(kc_server):
    """alice, with her own valid token, pages the service list one by one and sends cursors
    of her choosing (one before everything, one taken from an administrator's page right
    after bob's reservation): every page holds her services only, and no next cursor tells
    her that bob's come after her last one."""
    port, tokens, key, bobs = kc_server
    sm = tokens.make(key, preferred_username="iosea-sm", **roles("session-manager"))
    alice = tokens.make(key, preferred_username=ALICE, **roles())
    admin = tokens.make(key, preferred_username="ops", **roles("admin"))
    body = {"user_slurm_token": "t", "type": "GBF",  # noqa: S106 - not a secret
            "attributes": {"cores": 1, "msize": 10, "gssize": 0, "mountpoint": "/mnt/x"}}
    mine = [unique("page", ALICE) for _ in range(2)]
    for name, user in ((mine[0], ALICE), (mine[1], ALICE), (unique("page"), BOB)):
        code, _, answer = request(port, "POST", "/v1.0.0/ephemeralservice/reserve", sm,
                                  {**body, "name": name, "user": user})
        assert code == 200, answer
    status = "/v1.0.0/ephemeralservice/status"
    seen, after = [], ""
    for _ in range(5):
        code, headers, page = request(port, "GET", f"{status}?limit=1{after}", alice)
        assert code == 200, page
        seen += [s["name"] for s in page]
        if "x-next-cursor" not in headers:
            break
        after = f"&after={headers['x-next-cursor']}"
    assert seen == mine
    _, headers, _ = request(port, "GET", f"{status}?limit=1", admin)  # after bob's first
    for cursor in ("r~0", headers["x-next-cursor"]):
        code, headers, page = request(port, "GET", f"{status}?limit=5&after={cursor}", alice)
        assert code == 200 and [s["name"] for s in page] == mine, page
        assert "x-next-cursor" not in headers
    assert bobs not in json.dumps(seen)


def test_a_token_with_a_non_string_sub_is_refused(kc_server, bob_things):
    """alice's validly signed admin token with ``sub`` (then ``jti``) a number or an
    object: 401 ``malformed`` naming the claim; bob's reservation unchanged."""
    port, tokens, key, name = kc_server
    before = bob_reservation(port, tokens, key, name), bob_things()
    for claim, value in (("sub", 1002), ("sub", {"user": "bob"}), ("jti", 7)):
        forged = tokens.make(key, preferred_username="alice", **{claim: value},
                             **roles("admin"))
        code, headers, _ = request(port, "DELETE", f"/v2.0.0/server/allocation/{name}",
                                   forged)
        assert_token_refused(code, headers, "malformed", f"'{claim}' claim is not a string")
    assert (bob_reservation(port, tokens, key, name), bob_things()) == before


# --- the slurmrestd link ----------------------------------------------------------------


def host_address() -> str:
    """This host's first non-loopback IPv4 address (the cluster network's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))  # no packet is sent: picks the outgoing address
        address = s.getsockname()[0]
    assert not address.startswith("127."), address
    return address


def test_plain_http_slurmrestd_off_loopback_is_refused_and_no_token_is_sent(
        open_dir, bob_things):
    """alice listens on the host's network address, where a misconfigured
    ``slurmrestd_url = http://<that address>:<port>`` points (she could as well sniff the
    wire). ``serve`` refuses to start (exit 2) naming ``slurmrestd_url`` and
    ``slurmrestd_insecure``; no connection reaches her listener, the token never leaves."""
    before = bob_things()
    address = host_address()
    listener = socket.socket()
    listener.bind((address, 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    got: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    got.append(conn.recv(65536))
                except OSError:
                    got.append(b"(connected)")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    token_file = os.path.join(open_dir, "slurm.jwt")
    secret = "SLURMUSER-TOKEN-" + os.urandom(8).hex()
    with open(token_file, "w") as fh:
        fh.write(secret + "\n")
    os.chmod(token_file, 0o600)
    config = write_conf(open_dir, free_port())
    with open(config, encoding="utf-8") as fh:
        text = fh.read().replace(
            "slurmrestd_url =", f"slurmrestd_url = http://{address}:{port}\n"
                                f"slurm_token_file = {token_file}\n#")
    with open(config, "w", encoding="utf-8") as fh:
        fh.write(text)
    try:
        out = run_serve(config)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert out.returncode == 2, f"{out.returncode}:\n{out.stderr[-3000:]}"
    assert "slurmrestd_url" in out.stderr and "slurmrestd_insecure" in out.stderr, out.stderr
    assert "https://" in out.stderr, out.stderr
    assert got == [], f"the orchestrator connected to {address}:{port}: {got}"
    assert secret not in out.stderr
    assert bob_things() == before
