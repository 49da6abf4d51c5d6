"""Contract tests: the requests of the IO-SEA Session Manager (wfm-api 1.6.0) as it sends them."""

import pytest

# Exactly what wfm-api builds (utils/utils.py::build_service_name uses hyphens;
# fill_reservation_request sends the constant token, targets split on ':',
# the raw WDF storagesize string, and location split on ',' -> [] when absent).
SM_SBB = {"name": "alice-sess1-sbb1", "user": "alice", "user_slurm_token": "MYTOKEN",
          "type": "SBB", "servers": 1,
          "attributes": {"flavor": "small", "targets": ["/scratch/in/*", "/scratch/cfg/*"]},
          "location": []}
SM_GBF = {"name": "alice-sess1-nfs1", "user": "alice", "user_slurm_token": "MYTOKEN",
          "type": "GBF", "servers": 1,
          "attributes": {"gssize": "2GiB", "mountpoint": "/mnt/nfs1"}, "location": []}
SM_DASI = {"name": "alice-sess1-dasi1", "user": "alice", "user_slurm_token": "MYTOKEN",
           "type": "DASI", "servers": 1,
           "attributes": {"gssize": "2GiB", "mountpoint": "/mnt/dasi"}, "location": []}
SM = "/v2.0.0"  # resourcemanager.version default of wfm-api


def post(client, body, prefix=SM):
    return client.simulate_post(f"{prefix}/ephemeralservice/reserve", json=body)


def test_session_start_bodies_are_accepted_with_200(client):
    """SBB with a target list and location [], GBF and DASI with gssize "2GiB": all 200."""
    for b in (SM_SBB, SM_GBF, SM_DASI):
        r = post(client, b)
        assert r.status_code == 200, r.text
        assert r.json["status"] == "FREE"
    alloc = client.simulate_get(f"{SM}/server/allocation/alice-sess1-nfs1").json
    assert alloc["properties"][0]["ssize"] == 2048  # "2GiB" -> MB
    alloc = client.simulate_get(f"{SM}/server/allocation/alice-sess1-dasi1").json
    assert alloc["properties"][0]["ssize"] == 2048


@pytest.mark.parametrize("prefix", ["/v1.0.0", "/v2.0.0", "/v2.1.0"])
def test_configuration_reads_under_any_version_prefix_without_content_type(client, prefix):
    """GET location/list and flavors arrive without Content-Type under /v2.0.0 (or /v2.1.0)."""
    r = client.simulate_get(f"{prefix}/location/list", headers={"Accept": "*/*"})
    assert r.status_code == 200 and r.json == [{"name": "loc1"}, {"name": "loc2"}]
    flavors = client.simulate_get(f"{prefix}/ephemeralservice/flavors").json
    assert all("ssize" in f for f in flavors)
    assert flavors[0]["ssize"] == 0


def test_session_start_retry_is_idempotent(client):
    """Re-running a session start sends the same bodies again: 200, no second reservation."""
    for _ in range(2):
        for b in (SM_SBB, SM_GBF, SM_DASI):
            assert post(client, b).status_code == 200
    statuses = client.simulate_get(f"{SM}/ephemeralservice/status/alice").json
    assert sorted(s["name"] for s in statuses) == sorted(
        [SM_SBB["name"], SM_GBF["name"], SM_DASI["name"]])
    used = 8 - client.simulate_get(f"{SM}/server/resources/dn1").json["free_cores"]
    assert used == 2 + 1 + 1  # small flavor + one core each for GBF and DASI


def test_queued_reservation_is_200_too(client):
    """A reservation that must wait is still answered 200 (the SM aborts on anything else)."""
    for i in range(4):
        b = dict(SM_SBB, name=f"alice-s-big{i}", attributes={"flavor": "large",
                                                             "targets": ["/x"]})
        assert post(client, b).json["status"] == "FREE"
    r = post(client, SM_SBB)
    assert r.status_code == 200 and r.json["status"] == "QUEUED"
    assert "message" in r.json


@pytest.mark.parametrize(("gssize", "mb"), [("2GiB", 2048), ("500MB", 500), ("0.5T", 524288),
                                            ("2G", 2048), ("1048577", 2), (2048, 2048)])
def test_gssize_strings_use_the_wfm_conf_size_rules(client, gssize, mb):
    """gssize as a string with a unit is parsed like wfm.conf sizes (binary, rounded up)."""
    b = dict(SM_GBF, attributes={"gssize": gssize, "mountpoint": "/m"})
    assert post(client, b).status_code == 200
    alloc = client.simulate_get(f"{SM}/server/allocation/{SM_GBF['name']}").json
    assert alloc["properties"][0]["ssize"] == mb


@pytest.mark.parametrize("gssize", ["lots", "2 GiBs", "", "-1G"])
def test_gssize_string_that_is_not_a_size_is_400_naming_it(client, gssize):
    """A gssize string that is not a size: 400 naming the value, in `message`."""
    r = post(client, dict(SM_GBF, attributes={"gssize": gssize, "mountpoint": "/m"}))
    assert r.status_code == 400
    assert repr(gssize) in r.json["message"] and r.json["field"] == "attributes.gssize"


def test_targets_may_be_a_string_or_a_list(client):
    """targets: a pattern string (spec) or a list of patterns (the SM) are both accepted."""
    assert post(client, dict(SM_SBB, attributes={"flavor": "small",
                                                 "targets": "/a/*"})).status_code == 200
    bad = post(client, dict(SM_SBB, name="x-y-z", attributes={"flavor": "small",
                                                              "targets": [1, 2]}))
    assert bad.status_code == 400 and bad.json["field"] == "attributes.targets[0]"


def test_locations_are_trimmed_and_empty_means_no_constraint(client):
    """location [" loc2 "] is loc2; [] places anywhere."""
    b = dict(SM_GBF, location=[" loc2 "])
    assert post(client, b).status_code == 200
    alloc = client.simulate_get(f"{SM}/server/allocation/{SM_GBF['name']}").json
    assert alloc["properties"][0]["server_name"] in ("dn3", "dn4")


def test_every_error_body_carries_message(client):
    """On failure the SM reads `message`: 400, 404, 409, 500, 501 and 502 all carry it."""
    answers = [
        post(client, dict(SM_SBB, type="XFS")),
        client.simulate_get(f"{SM}/no/such/route"),
        client.simulate_get(f"{SM}/server/allocation/none-such-x"),
        client.simulate_delete(f"{SM}/server/allocation/none-such-x"),
        client.simulate_post(f"{SM}/ephemeralservice/reserve", body=b"{oops",
                             headers={"Content-Type": "application/json"}),
    ]
    post(client, SM_SBB)
    client.simulate_get(f"{SM}/server/allocation/{SM_SBB['name']}")
    answers.append(client.simulate_get(f"{SM}/server/allocation/{SM_SBB['name']}"))
    assert [a.status_code for a in answers] == [400, 404, 500, 502, 400, 501]
    for a in answers:
        assert isinstance(a.json["message"], str) and a.json["message"]


def test_strict_spec_rules_still_hold_for_the_sm_paths(client):
    """The aliases do not loosen validation: flavor with cores is still refused."""
    r = post(client, dict(SM_SBB, attributes={"flavor": "small", "cores": 1, "targets": ["/x"]}))
    assert r.status_code == 400 and r.json["field"] == "attributes.cores"
