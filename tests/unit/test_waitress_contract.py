"""What wfm_orchestrator.http relies on in waitress, beyond its documented API.

The list was built from the code: every ``waitress`` import of http/ and
every attribute our subclasses read, write or override on waitress' objects
(grep ``waitress``, ``self.``, ``channel.``, ``request.``, ``server.`` and
``adj.`` in src/wfm_orchestrator/http/). When a new waitress renames or
drops one of them, the test fails once, naming each change and where it is
used: that is the list of places to adapt (and to check against
tests/unit/test_waitress_fast.py's differential tests).

Also checked here: waitress is touched in http/ only, and the core modules
import nothing of the server, its loop or waitress (issue #14).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import pathlib
import socket

import falcon
import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "wfm_orchestrator"

# (module, name, used where): module-level names imported by http/.
MODULE_NAMES = [
    ("waitress", "create_server", "http/server.py create_server"),
    ("waitress.wasyncore", "poll", "http/server.py run_loop"),
    ("waitress.wasyncore", "poll2", "http/server.py run_loop"),
    ("waitress.buffers", "OverflowableBuffer", "http/parser.py, http/channel.py _append"),
    ("waitress.buffers", "ReadOnlyFileBasedBuffer", "http/task.py _connection_environ"),
    ("waitress.channel", "HTTPChannel", "http/channel.py LoopChannel, StockChannel"),
    ("waitress.channel", "ClientDisconnected", "http/channel.py write_soon"),
    ("waitress.parser", "HTTPRequestParser", "http/parser.py FastRequestParser"),
    ("waitress.parser", "ParsingError", "http/parser.py"),
    ("waitress.parser", "TransferEncodingNotImplemented", "http/parser.py _transfer_encoding"),
    ("waitress.parser", "crack_first_line", "http/parser.py parse_header"),
    ("waitress.parser", "get_header_lines", "http/parser.py parse_header"),
    ("waitress.parser", "split_uri", "http/parser.py parse_header"),
    ("waitress.receiver", "ChunkedReceiver", "http/parser.py _transfer_encoding"),
    ("waitress.receiver", "FixedStreamReceiver", "http/parser.py parse_header"),
    ("waitress.rfc7230", "HEADER_FIELD_RE", "http/parser.py parse_header"),
    ("waitress.rfc7230", "ONLY_DIGIT_RE", "http/parser.py parse_header"),
    ("waitress.task", "WSGITask", "http/task.py FastWSGITask"),
    ("waitress.task", "ThreadedTaskDispatcher", "http/dispatcher.py LoopDispatcher"),
    ("waitress.task", "build_http_date", "http/task.py _http_date"),
    ("waitress.task", "rename_headers", "http/task.py get_environment"),
    ("waitress.utilities", "BadRequest", "http/parser.py _Strict._refuse"),
    ("waitress.utilities", "find_double_newline", "http/parser.py _Strict.received"),
]

# (module, callable, parameter names, used where): calls whose signature matters.
SIGNATURES = [
    ("waitress", "create_server", ("application", "map", "_start", "_sock", "_dispatcher", "kw"),
     "http/server.py create_server (_dispatcher: our LoopDispatcher)"),
    ("waitress.wasyncore", "poll", ("timeout", "map"), "http/server.py run_loop"),
    ("waitress.wasyncore", "poll2", ("timeout", "map"), "http/server.py run_loop"),
    ("waitress.task", "build_http_date", ("when",), "http/task.py _http_date"),
    ("waitress.parser", "crack_first_line", ("line",), "http/parser.py parse_header"),
    ("waitress.parser", "get_header_lines", ("header",), "http/parser.py parse_header"),
    ("waitress.parser", "split_uri", ("uri",), "http/parser.py parse_header"),
    ("waitress.utilities", "find_double_newline", ("s",), "http/parser.py _Strict.received"),
    ("waitress.buffers", "OverflowableBuffer", ("overflow",), "http/channel.py _append"),
]

# (module, class, method, parameter names or None, used where): methods we override or call.
METHODS = [
    ("waitress.parser", "HTTPRequestParser", "received", ("self", "data"),
     "http/parser.py _Strict.received (override)"),
    ("waitress.parser", "HTTPRequestParser", "parse_header", ("self", "header_plus"),
     "http/parser.py FastRequestParser.parse_header (override)"),
    ("waitress.parser", "HTTPRequestParser", "get_body_stream", ("self",),
     "http/task.py get_environment"),
    ("waitress.parser", "HTTPRequestParser", "close", ("self",), "http/channel.py _refuse"),
    ("waitress.task", "WSGITask", "get_environment", ("self",),
     "http/task.py FastWSGITask.get_environment (override)"),
    ("waitress.task", "WSGITask", "build_response_header", ("self",),
     "http/task.py FastWSGITask.build_response_header (override)"),
    ("waitress.task", "WSGITask", "set_close_on_finish", ("self",),
     "http/task.py build_response_header"),
    ("waitress.task", "ThreadedTaskDispatcher", "add_task", ("self", "task"),
     "http/dispatcher.py LoopDispatcher.add_task (override: receives the channel)"),
    ("waitress.task", "ThreadedTaskDispatcher", "set_thread_count", ("self", "count"),
     "http/server.py create_server"),
    ("waitress.task", "ThreadedTaskDispatcher", "handler_thread", ("self", "thread_no"),
     "http/dispatcher.py LoopDispatcher.handler_thread (override: the worker's priority)"),
    ("waitress.task", "ThreadedTaskDispatcher", "shutdown", None, "http/server.py run_loop"),
    ("waitress.channel", "HTTPChannel", "received", ("self", "data"),
     "http/channel.py LoopChannel.received (override)"),
    ("waitress.channel", "HTTPChannel", "readable", ("self",),
     "http/channel.py LoopChannel.readable (override, conditions inlined)"),
    ("waitress.channel", "HTTPChannel", "writable", ("self",),
     "http/channel.py LoopChannel.writable (override, conditions inlined)"),
    ("waitress.channel", "HTTPChannel", "handle_write", ("self",),
     "http/channel.py LoopChannel.handle_write (override)"),
    ("waitress.channel", "HTTPChannel", "service", ("self",), "http/channel.py _serve_on_loop"),
    ("waitress.channel", "HTTPChannel", "write_soon", ("self", "data"),
     "http/channel.py LoopChannel.write_soon (override)"),
    ("waitress.channel", "HTTPChannel", "_flush_exception", ("self", "flush", "do_close"),
     "http/channel.py _flush"),
    ("waitress.channel", "HTTPChannel", "_flush_some", ("self", "do_close"),
     "http/channel.py _flush (through _flush_exception)"),
    ("waitress.channel", "HTTPChannel", "check_client_disconnected", ("self",),
     "http/task.py get_environment"),
]

# Class attributes we set on subclasses (waitress must still read them).
CLASS_ATTRIBUTES = [
    ("waitress.channel", "HTTPChannel", "parser_class", "http/channel.py (our parsers)"),
    ("waitress.channel", "HTTPChannel", "task_class", "http/channel.py (FastWSGITask)"),
    ("waitress.channel", "HTTPChannel", "error_task_class", "http/channel.py (ClosingErrorTask)"),
]

# Instance attributes, checked on real objects (where, as "what: used where").
PARSER_ATTRIBUTES = {
    "first_line": "http/parser.py",
    "headers": "http/parser.py (_Strict: Transfer-Encoding kept outside HTTP/1.1), task.py",
    "request_uri": "http/parser.py, http/task.py", "command": "http/parser.py, dispatcher.py",
    "version": "http/parser.py", "proxy_scheme": "http/parser.py",
    "proxy_netloc": "http/parser.py", "path": "http/parser.py, dispatcher.py, task.py",
    "query": "http/parser.py, http/task.py", "fragment": "http/parser.py",
    "url_scheme": "http/parser.py, http/task.py", "adj": "http/parser.py",
    "connection_close": "http/parser.py", "expect_continue": "http/parser.py",
    "chunked": "http/parser.py", "content_length": "http/parser.py",
    "body_rcv": "http/parser.py", "header_plus": "http/parser.py _Strict.received",
    "completed": "http/parser.py _Strict", "error": "http/parser.py _Strict, dispatcher.py",
}
ADJUSTMENTS = {
    "url_scheme": "http/parser.py", "inbuf_overflow": "http/parser.py",
    "channel_request_lookahead": "http/channel.py readable",
    "outbuf_high_watermark": "http/channel.py _append",
    "outbuf_overflow": "http/channel.py _append", "asyncore_use_poll": "http/server.py",
    "asyncore_loop_timeout": "http/server.py", "ident": "http/task.py, http/channel.py",
    "url_prefix": "http/task.py",
}
CHANNEL_ATTRIBUTES = {
    "will_close": "http/channel.py readable/writable",
    "close_when_flushed": "http/channel.py readable/writable/_refuse",
    "total_outbufs_len": "http/channel.py readable/writable/_append/_flush",
    "requests": "http/channel.py, dispatcher.py", "requests_lock": "http/channel.py _refuse",
    "outbufs": "http/channel.py _append", "current_outbuf_count": "http/channel.py _append",
    "outbuf_lock": "http/channel.py _append/_flush", "connected": "http/channel.py",
    "server": "http/channel.py, http/task.py", "addr": "http/task.py _connection_environ",
    "adj": "http/channel.py",
}
SERVER_ATTRIBUTES = {
    "_map": "http/server.py run_loop", "trigger": "http/server.py (Mailbox)",
    "pull_trigger": "http/server.py (replaced by wake_loop)",
    "task_dispatcher": "http/channel.py to_worker, http/server.py run_loop",
    "channel_class": "http/server.py create_server", "effective_port": "http/task.py",
    "server_name": "http/task.py _connection_environ", "adj": "http/server.py",
    "add_task": "http/channel.py _answer", "run": "http/server.py (replaced by run_loop)",
}
TASK_ATTRIBUTES = {
    "environ": "http/task.py", "request": "http/task.py", "channel": "http/task.py",
    "version": "http/task.py", "response_headers": "http/task.py", "has_body": "http/task.py",
    "content_length": "http/task.py", "close_on_finish": "http/task.py",
    "chunked_response": "http/task.py", "status": "http/task.py", "start_time": "http/task.py",
}


def _missing(obj: object, wanted: dict[str, str], what: str) -> list[str]:
    return [f"{what}.{name} (used in {where})" for name, where in wanted.items()
            if not hasattr(obj, name)]


def _params(fn: object) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_waitress_still_has_every_private_name_the_http_package_relies_on():
    import waitress
    from waitress.adjustments import Adjustments
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.task import WSGITask

    problems: list[str] = []
    for module, name, where in MODULE_NAMES:
        if not hasattr(importlib.import_module(module), name):
            problems.append(f"{module}.{name} is gone (used in {where})")
    for module, name, params, where in SIGNATURES:
        fn = getattr(importlib.import_module(module), name, None)
        if fn is not None and _params(fn)[:len(params)] != params:
            problems.append(f"{module}.{name}{inspect.signature(fn)} no longer takes "
                            f"{params} (used in {where})")
    for module, cls_name, method, params, where in METHODS:
        cls = getattr(importlib.import_module(module), cls_name)
        fn = getattr(cls, method, None)
        if fn is None:
            problems.append(f"{module}.{cls_name}.{method} is gone (used in {where})")
        elif params is not None and _params(fn) != params:
            problems.append(f"{module}.{cls_name}.{method}{inspect.signature(fn)} changed: "
                            f"expected {params} (used in {where})")
    for module, cls_name, attr, where in CLASS_ATTRIBUTES:
        if not hasattr(getattr(importlib.import_module(module), cls_name), attr):
            problems.append(f"{module}.{cls_name}.{attr} is gone (used in {where})")

    adj = Adjustments()
    problems += _missing(adj, ADJUSTMENTS, "Adjustments")
    parser = HTTPRequestParser(adj)
    parser.received(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n")
    problems += _missing(parser, PARSER_ATTRIBUTES, "HTTPRequestParser")

    server = waitress.create_server(falcon.App(), host="127.0.0.1", port=0)
    ours, theirs = socket.socketpair()
    try:
        problems += _missing(server, SERVER_ATTRIBUTES, "the waitress server")
        channel = HTTPChannel(server, ours, ("127.0.0.1", 1), adj, map={})
        problems += _missing(channel, CHANNEL_ATTRIBUTES, "HTTPChannel")
        task = WSGITask(channel, parser)
        problems += _missing(task, TASK_ATTRIBUTES, "WSGITask")
    finally:
        theirs.close()
        server.close()

    assert not problems, (
        f"waitress {importlib.metadata.version('waitress')} changed what "
        "wfm_orchestrator/http relies on:\n  " + "\n  ".join(problems))


def test_the_contract_names_what_changed_and_where_it_is_used(monkeypatch):
    """A waitress without one of the names fails with one message saying which and where."""
    from waitress.channel import HTTPChannel

    monkeypatch.delattr(HTTPChannel, "_flush_some")
    with pytest.raises(AssertionError) as failed:
        test_waitress_still_has_every_private_name_the_http_package_relies_on()
    message = str(failed.value)
    assert "waitress.channel.HTTPChannel._flush_some is gone" in message
    assert "http/channel.py _flush" in message


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a source file imports (relative imports resolved to wfm_orchestrator.*)."""
    found: set[str] = set()
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_waitress_is_touched_in_the_http_package_only():
    outside = {str(path.relative_to(SRC)) for path in SRC.rglob("*.py")
               if "http" not in path.relative_to(SRC).parts[:1]
               and any(name.split(".")[0] == "waitress" for name in _imports(path))}
    assert not outside, f"waitress imported outside wfm_orchestrator/http: {sorted(outside)}"


def test_the_core_imports_nothing_of_the_server():
    """Issue #14: the use cases and the store know nothing of the server or its loop."""
    server_side = ("waitress", "wfm_orchestrator.http", "wfm_orchestrator.api")
    # Everything but the edges that serve HTTP (http/, api/) and wire it (cli.py).
    edges = ("http", "api", "cli.py")
    core = [path for path in SRC.rglob("*.py") if path.relative_to(SRC).parts[0] not in edges]
    assert any(path.name == "resource_manager.py" for path in core)
    found = {str(path.relative_to(SRC)): sorted(m for m in _imports(path)
                                                if m.startswith(server_side))
             for path in core}
    assert not any(found.values()), f"core modules importing the server side: {found}"
