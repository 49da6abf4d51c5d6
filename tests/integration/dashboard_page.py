"""Headless Chromium for the dashboard's tests (test_dashboard.py): run it, read the document
it drew, and a loopback server of the package's page with a canned /ui/overview."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
from html.parser import HTMLParser
from importlib import resources

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, profile: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        # CI installs it (deploy/install): a machine without it skips, nothing else does.
        pytest.skip("chromium is not installed (deploy/install installs it)")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--virtual-time-budget=10000", *args],
        capture_output=True, text=True, timeout=90, check=True)


def dump_dom(url: str, tmp_path) -> Page:
    out = chromium("--dump-dom", url, profile=str(tmp_path / "chromium")).stdout
    page = Page()
    page.feed(out)
    return page


class Page(HTMLParser):
    """The drawn document: elements with their attributes and their text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, **dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in ("meta", "link", "input", "br", "img"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def find(self, **attrs) -> list[dict]:
        return [e for e in self.elements if all(e.get(k) == v for k, v in attrs.items())]

    def one(self, **attrs) -> dict:
        found = self.find(**attrs)
        assert len(found) == 1, (attrs, found)
        return found[0]

    def rows(self, table: str) -> list[dict]:
        """The body rows of a table, in order (each with its cells' texts)."""
        inside = False
        rows: list[dict] = []
        for e in self.elements:
            if e["tag"] == "table":
                inside = e.get("id") == table
            elif inside and e["tag"] == "tr" and "data-name" in e:
                rows.append({**e, "cells": []})
            elif inside and e["tag"] == "td" and rows:
                rows[-1]["cells"].append(e["text"])
        return rows


def canned_overview() -> dict:
    def node(name, state, reason, free_cores):
        return {"name": name, "location": "loc1", "state": state, "reason": reason,
                "cores": 8, "free_cores": free_cores, "msize": 16384, "free_msize": 16384,
                "ssize": 1048576, "free_ssize": 1048576}

    return {
        "time": "2026-12-06T12:00:00Z", "slurm": {"configured": True,
                                                  "problem": "slurmrestd did not answer"},
        "datanodes": [node("dn1", "up", "", 2), node("dn2", "drained", "disk swap", 8),
                      node("dn3", "down", "Slurm: DOWN (not responding)", 8)],
        "reservations": {"QUEUED": 0, "FREE": 1, "ALLOCATED": 0, "RELEASED": 0},
        "queue": {"length": 0, "oldest_wait": 0, "items": []},
        "services": {"count": 1, "items": [
            {"user": "alice", "name": "<img src=x onerror=alert(1)>", "status": "ALLOCATED",
             "detail": "<b>not bold</b>", "time": "2026-12-06T11:59:00Z"}]},
        "steps": {"count": 1, "items": [
            {"user": "alice", "name": "alice_st_1", "status": "RUNNING",
             "detail": "step job running", "time": "2026-12-06T11:58:00Z"}]},
    }


class CannedHandler(http.server.BaseHTTPRequestHandler):
    overview: dict = {}
    token_needed = False

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/ui/overview":
            if self.token_needed and not self.headers.get("Authorization"):
                body = json.dumps({"title": "Unauthorized", "description": "authentication "
                                   "required: send 'Authorization: Bearer <token>'"}).encode()
                return self.answer(401, "application/json", body)
            return self.answer(200, "application/json", json.dumps(self.overview).encode())
        name = {"/ui": "dashboard.html", "/ui/dashboard.js": "dashboard.js",
                "/ui/dashboard.css": "dashboard.css"}.get(self.path)
        if name is None:
            return self.answer(404, "text/plain", b"not found")
        files = resources.files("wfm_orchestrator.api").joinpath("ui", name)
        kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
        return self.answer(200, kind[name.rsplit(".", 1)[1]], files.read_bytes())

    def answer(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
