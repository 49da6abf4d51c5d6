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


def test_on_the_event_loop_lines_are_written_once_per_turn(client):
    """Requests served on the server's loop write a turn's lines together, when the turn ends."""
    import io
    import threading

    from wfm_orchestrator.api.serving import LOOP
    from wfm_orchestrator.http.channel import LoopRequest

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    access = logging.getLogger("wfm_orchestrator.access")
    access.addHandler(handler)
    old = access.level
    access.setLevel(logging.INFO)
    seen = {}

    def turn():
        ending: list = []  # as the server's loop (http/server.py) collects them

        def on_loop():
            return {LOOP: LoopRequest(ending.append)}

        client.simulate_get("/v1.0.0/location/list", extras=on_loop())
        client.simulate_get("/v1.0.0/ephemeralservice/flavors", extras=on_loop())
        seen["before"] = stream.getvalue()
        assert len(ending) == 1  # one write for the turn
        while ending:
            ending.pop(0)()
        seen["after"] = stream.getvalue()

    try:
        t = threading.Thread(target=turn)
        t.start()
        t.join(10)
    finally:
        access.removeHandler(handler)
        access.setLevel(old)
    assert seen["before"] == ""
    lines = seen["after"].splitlines()
    assert len(lines) == 2
    assert " GET /v1.0.0/location/list 200 " in lines[0]
    assert " GET /v1.0.0/ephemeralservice/flavors 200 " in lines[1]
