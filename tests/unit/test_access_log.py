import logging


def test_one_access_line_per_request(client, capsys):
    """Each request logs method, path, status and milliseconds."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        client.simulate_get("/v1.0.0/location/list")
        client.simulate_get("/v1.0.0/nowhere")
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    lines = [x for x in capsys.readouterr().err.splitlines() if "wfm_orchestrator.access" in x]
    assert len(lines) == 2
    assert " INFO wfm_orchestrator.access: GET /v1.0.0/location/list 200 " in lines[0]
    assert lines[0].endswith("ms") and " GET /v1.0.0/nowhere 404 " in lines[1]
