"""Paging of the list endpoints (``limit``, ``after``, ``X-Next-Cursor``, ``Link``), in
process on a real store: edge cases, filters, and walks that meet inserts and deletes."""

from __future__ import annotations

import itertools
import threading
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfm_orchestrator.api.paging import CURSOR_PATTERNS, MAX_LIMIT, NEXT_CURSOR, cursor
from wfm_orchestrator.paging import Page, positional, take

from ..conftest import reserve
from .test_steps_api import launch_for_two_users
from .test_steps_api import make_client as make_step_client

STATUS = "/v1.0.0/ephemeralservice/status"
RESERVATIONS = "/admin/reservations"


def nothing(name: str, user: str = "alice") -> dict:
    """A reservation that holds nothing: any number of them fit (NFS, zero demand)."""
    return {"name": name, "user": user, "user_slurm_token": "t", "type": "NFS",
            "attributes": {"cores": 0, "gssize": 0, "mountpoint": "/m"}}


def names(items: list[dict]) -> list[str]:
    return [item["name"] for item in items]


def get(client, path: str, **params):
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return client.simulate_get(path, query_string=query)


def walk(client, path: str, limit: int, **params) -> list[list[dict]]:
    """Every page of ``path`` by ``limit``, following X-Next-Cursor; asserts the Link
    header repeats the request with that cursor."""
    pages, after = [], None
    while True:
        r = get(client, path, limit=limit, after=after, **params)
        assert r.status_code == 200, r.text
        pages.append(r.json)
        after = r.headers.get(NEXT_CURSOR.lower())
        if after is None:
            assert "link" not in r.headers
            return pages
        link = r.headers["link"]
        assert link.startswith(f"<{path}?") and link.endswith('>; rel="next"'), link
        query = dict(urllib.parse.parse_qsl(link[len(path) + 2:-len('>; rel="next"')]))
        assert query == {**{k: str(v) for k, v in params.items() if v is not None},
                         "limit": str(limit), "after": after}
        assert len(pages) < 1000, "the walk does not end"


# --- the pure part -------------------------------------------------------------------


def test_take_gives_the_next_key_only_when_an_accepted_item_follows():
    """A full page whose last accepted item ends the list is the last page."""
    assert take([1, 2, 3, 4], 0, 2, None, str) == Page([1, 2], "2")
    assert take([1, 2, 3, 4], 2, 2, None, str) == Page([3, 4], None)
    assert take([1, 2, 3, 4, 5], 0, 2, lambda x: x % 2 == 1, str) == Page([1, 3], "3")
    assert take([1, 2, 3, 4], 0, 2, lambda x: x < 3, str) == Page([1, 2], None)
    assert take([], 0, 5, None, str) == Page([], None)
    assert take([1, 2], 0, None, None, str) == Page([1, 2], None)


def test_positional_resumes_after_the_name_or_at_its_old_place():
    """A configured list's cursor: after the name where it is now; where it was, if a
    reload removed it."""
    dns = ["dn1", "dn2", "dn3", "dn4"]
    assert positional(dns, None, 2) == Page(["dn1", "dn2"], (1, "dn2"))
    assert positional(dns, (1, "dn2"), 2) == Page(["dn3", "dn4"], None)
    assert positional(["dn0", *dns], (1, "dn2"), 2) == Page(["dn3", "dn4"], None)
    assert positional(["dn1", "dn3", "dn4"], (1, "dn2"), 5) == Page(["dn3", "dn4"], None)
    assert positional(dns, (9, "gone"), 2) == Page([], None)


@pytest.mark.parametrize("kind, key", [("r", 0), ("r", 123456789), ("s", (1.5, "a_b.c-1")),
                                       ("s", (1733000000.1234567, "x")), ("s", (1e16, "y")),
                                       ("s", (7, "z")), ("d", (0, "dn1")), ("l", (3, "loc2")),
                                       ("f", (1, "small"))])
def test_every_cursor_has_the_declared_form(kind, key):
    """What the server sends back is what the OpenAPI document declares (a client
    validating the header accepts it) and what it reads again."""
    import re

    assert re.fullmatch(CURSOR_PATTERNS[kind].strip("^$"), cursor(kind, key))


# --- the service status list --------------------------------------------------------


def test_an_empty_list_is_one_page_without_a_cursor(client):
    r = get(client, STATUS, limit=10)
    assert r.status_code == 200 and r.json == []
    assert NEXT_CURSOR.lower() not in r.headers and "link" not in r.headers


def test_exactly_one_full_page_has_no_next_cursor(client):
    for i in range(3):
        reserve(client, nothing(f"alice_s_{i}"))
    assert walk(client, STATUS, 3) == [get(client, STATUS).json]


def test_pages_concatenate_to_the_unpaged_list_oldest_first(client):
    """Without limit the spec's list, unchanged; with it, the same items page by page; the
    last page is short and carries no cursor."""
    for i in range(7):
        reserve(client, nothing(f"alice_s_{i}"))
    whole = get(client, STATUS).json
    assert names(whole) == [f"alice_s_{i}" for i in range(7)]
    pages = walk(client, STATUS, 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [s for p in pages for s in p] == whole


def test_the_cursor_of_a_deleted_item_still_works(client):
    """The next page starts after the deleted item's place: nothing is skipped or repeated."""
    for i in range(6):
        reserve(client, nothing(f"alice_s_{i}"))
    first = get(client, STATUS, limit=2)
    after = first.headers[NEXT_CURSOR.lower()]
    assert client.simulate_delete("/v2.0.0/server/allocation/alice_s_1").status_code == 200
    # A released service stays listed (STOPPED) until released_retention: forget it now.
    client.services.rm.clock = lambda: 10**12
    assert "alice_s_1" in client.services.forget_released()
    r = get(client, STATUS, limit=2, after=after)
    assert r.status_code == 200 and names(r.json) == ["alice_s_2", "alice_s_3"]


def test_a_name_reserved_again_is_listed_once_at_its_new_place(client):
    """Reserving a released name replaces its record: the list holds the new one, last."""
    for i in range(3):
        reserve(client, nothing(f"alice_s_{i}"))
    assert client.simulate_delete("/v2.0.0/server/allocation/alice_s_0").status_code == 200
    reserve(client, nothing("alice_s_0"))
    for listed in (get(client, STATUS).json, [s for p in walk(client, STATUS, 1) for s in p]):
        assert names(listed) == ["alice_s_1", "alice_s_2", "alice_s_0"]
        assert listed[-1]["status"] != "STOPPED"


def test_after_without_limit_gives_the_rest(client):
    for i in range(4):
        reserve(client, nothing(f"alice_s_{i}"))
    after = get(client, STATUS, limit=1).headers[NEXT_CURSOR.lower()]
    r = get(client, STATUS, after=after)
    assert names(r.json) == ["alice_s_1", "alice_s_2", "alice_s_3"]
    assert NEXT_CURSOR.lower() not in r.headers


@pytest.mark.parametrize("after", ["x", "r~", "r~-1", "r~01", "r~1~2", "s~1~a", "d~1~dn1",
                                   "r~1\n", "r~99999999999999999999", "%00", "r~1 "])
def test_a_bad_cursor_is_400_naming_after(client, after):
    r = get(client, STATUS, after=after)
    assert r.status_code == 400, (after, r.text)
    assert r.json["field"] == "after" and "cursor" in r.json["message"]


@pytest.mark.parametrize("limit", ["0", "-1", "1.5", "x", str(MAX_LIMIT + 1), "1e3",
                                   "9999999999"])
def test_a_bad_limit_is_400_naming_limit(client, limit):
    r = get(client, STATUS, limit=limit)
    assert r.status_code == 400 and r.json["field"] == "limit", (limit, r.text)
    assert f"1 to {MAX_LIMIT}" in r.json["message"]


def test_the_largest_limit_is_accepted(client):
    reserve(client, nothing("alice_s_0"))
    r = get(client, STATUS, limit=MAX_LIMIT)
    assert r.status_code == 200 and names(r.json) == ["alice_s_0"]


def test_paging_with_uid_pages_only_that_users_services(client, account_table):
    """?uid= (the plugin's bbstat) and paging together: the filter applies before the
    limit, and the Link keeps the uid."""
    for i in range(5):
        reserve(client, nothing(f"alice_s_{i}"))
        reserve(client, nothing(f"bob_s_{i}", user="bob"))
    pages = walk(client, STATUS, 2, uid=account_table["bob"])
    assert [names(p) for p in pages] == [["bob_s_0", "bob_s_1"], ["bob_s_2", "bob_s_3"],
                                         ["bob_s_4"]]


def test_the_list_of_a_user_id_is_paged(client):
    for i in range(3):
        reserve(client, nothing(f"alice_s_{i}"))
        reserve(client, nothing(f"bob_s_{i}", user="bob"))
    pages = walk(client, f"{STATUS}/bob", 2)
    assert [names(p) for p in pages] == [["bob_s_0", "bob_s_1"], ["bob_s_2"]]
    # A service name answers its status, the paging parameters checked all the same.
    assert get(client, f"{STATUS}/bob_s_0", limit=1).json["name"] == "bob_s_0"
    assert get(client, f"{STATUS}/bob_s_0", limit=0).status_code == 400


def test_an_unknown_name_answers_an_empty_list_whatever_its_shape(client):
    """No service and no user of that name (too long, or starting with a digit, for a user
    name): [] as for any unknown name, not 400 (the document allows every name)."""
    for ident in ("0_not_a_user", "a" * 40, "nobody_here"):
        r = client.simulate_get(f"{STATUS}/{ident}")
        assert r.status_code == 200 and r.json == [], (ident, r.text)
    assert client.simulate_get(f"{STATUS}/-x").status_code == 400  # not a name at all


def test_admin_reservations_page_with_user_and_state(client):
    """?user= and ?state= filter before the limit; the cursor is the reservation list's."""
    for i in range(4):
        reserve(client, nothing(f"alice_s_{i}"))
        reserve(client, nothing(f"bob_s_{i}", user="bob"))
    pages = walk(client, RESERVATIONS, 3, user="bob", state="FREE")
    assert [names(p) for p in pages] == [["bob_s_0", "bob_s_1", "bob_s_2"], ["bob_s_3"]]
    after = get(client, STATUS, limit=1).headers[NEXT_CURSOR.lower()]
    assert names(get(client, RESERVATIONS, limit=1, after=after).json) == ["bob_s_0"]


# --- the configured lists -------------------------------------------------------------


@pytest.mark.parametrize("path, key", [("/v1.0.0/server/resources/all", "server_name"),
                                       ("/admin/datanodes", "name"),
                                       ("/v1.0.0/location/list", "name"),
                                       ("/v1.0.0/ephemeralservice/flavors", "name")])
def test_configured_lists_page_in_file_order(client, path, key):
    whole = get(client, path).json
    pages = walk(client, path, 3)
    assert [item for p in pages for item in p] == whole and len(whole) >= 2
    assert all(len(p) <= 3 for p in pages)


def test_a_cursor_of_another_list_is_refused(client):
    after = get(client, "/admin/datanodes", limit=1).headers[NEXT_CURSOR.lower()]
    r = get(client, "/v1.0.0/location/list", limit=1, after=after)
    assert r.status_code == 400 and r.json["field"] == "after"


# --- the step lists ---------------------------------------------------------------------


def test_step_lists_page_oldest_first_with_a_user_filter(make_config):
    client, steps, store = make_step_client(make_config)
    try:
        launch_for_two_users(client)
        whole = get(client, "/v1.0.0/step/status").json
        assert len(whole) == 10
        pages = walk(client, "/v1.0.0/step/status", 4)
        assert [len(p) for p in pages] == [4, 4, 2] and [s for p in pages for s in p] == whole
        pages = walk(client, "/v1.0.0/step/status/bob", 2)
        assert [names(p) for p in pages] == [["bob_s1_step_0", "bob_s1_step_1"],
                                             ["bob_s1_step_2", "bob_s1_step_3"],
                                             ["bob_s1_step_4"]]
        r = get(client, "/v1.0.0/step/status", after="r~1")
        assert r.status_code == 400 and r.json["field"] == "after"
    finally:
        store.close()


# --- walks that meet changes ------------------------------------------------------------


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["reserve", "release", "page", "page"]),
                          st.integers(0, 11), st.integers(1, 3)), min_size=10, max_size=40))
def test_a_walk_sees_no_item_twice_and_every_item_that_stayed(app_factory, tmp_path, ops):
    """Pages taken while reservations come and go (released, then forgotten at once):
    ids strictly increase across a walk (no item twice), every reservation listed during
    the whole walk is seen, and a walk during which nothing changed concatenates to the
    unpaged list."""
    client, rm, store = app_factory(state_db=str(tmp_path / f"{next(EXAMPLES)}.db"))
    try:
        check_walks(client, rm, ops)
    finally:
        store.close()


EXAMPLES = itertools.count()


def check_walks(client, rm, ops) -> None:
    now = [1_000_000.0]
    rm.clock = lambda: now[0]
    for n in range(0, 12, 2):
        reserve(client, nothing(f"alice_s_{n}"))

    def listed() -> list[dict]:
        return get(client, STATUS).json

    after, seen, changed = None, [], False
    started = listed()
    stayed = {s["id"] for s in started}
    for op, n, limit in ops:
        name = f"alice_s_{n}"
        held = rm.get(name) is not None and rm.get(name).state.value != "RELEASED"
        if op == "reserve" and not held:
            reserve(client, nothing(name))
            changed = True
        elif op == "release" and held:
            client.simulate_delete(f"/v2.0.0/server/allocation/{name}")
            now[0] += rm.config.released_retention + 1
            client.services.forget_released()  # gone from every list (the newest stays)
            stayed &= {s["id"] for s in listed()}
            changed = True
        elif op == "page":
            r = get(client, STATUS, limit=limit, after=after)
            assert r.status_code == 200, r.text
            seen += r.json
            ids = [s["id"] for s in seen]
            assert ids == sorted(set(ids)), "an item was seen twice or out of order"
            after = r.headers.get(NEXT_CURSOR.lower())
            if after is None:  # the walk ends: judge it, start another
                assert stayed <= set(ids), "an item listed during the whole walk was skipped"
                if not changed:
                    assert seen == started
                seen, changed = [], False
                started = listed()
                stayed = {s["id"] for s in started}


def test_pages_stay_consistent_while_another_thread_reserves_and_releases(client):
    """Walks under a stream of reserves and releases on another thread: no id twice, ids
    in order, and the reservations that never change are all seen by every walk."""
    for i in range(20):
        reserve(client, nothing(f"bob_keep_{i}", user="bob"))
    kept = {s["id"] for s in get(client, STATUS).json}
    stop = threading.Event()
    failures: list[str] = []

    def churn() -> None:
        i = 0
        while not stop.is_set():
            name = f"alice_churn_{i % 7}"
            r = client.simulate_post("/v1.0.0/ephemeralservice/reserve", json=nothing(name))
            if r.status_code != 200:
                failures.append(r.text)
            client.simulate_delete(f"/v2.0.0/server/allocation/{name}")
            i += 1

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for limit in (1, 2, 3, 5, 8):
            ids = [s["id"] for p in walk(client, STATUS, limit) for s in p]
            assert ids == sorted(set(ids)), f"limit {limit}: an id twice or out of order"
            assert kept <= set(ids), f"limit {limit}: a kept reservation was skipped"
    finally:
        stop.set()
        thread.join(10)
    assert not failures, failures[:3]
