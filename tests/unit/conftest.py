"""Fixtures of the unit tests (the shared ones, on a real SQLite store, are in tests/conftest.py).

Fixtures live in conftest.py files only (test_fixtures_only_in_conftest.py checks it): a
test module that needs one declares it as a parameter and finds it here.
"""

from __future__ import annotations

import pytest

from wfm_orchestrator.allocator import _compiled, reference

# The allocator's two implementations, driven by the same rules (test_allocator.py).
ALLOCATORS = {"compiled": _compiled.Allocator, "reference": reference.Allocator}


@pytest.fixture(params=sorted(ALLOCATORS))
def Allocator(request):  # noqa: N802 - stands for the class under test
    """Each allocator class in turn: the compiled one and the pure-Python reference."""
    return ALLOCATORS[request.param]


@pytest.fixture(params=["avx2", "plain"])
def scan(request):
    """Both block scans of the C index: AVX2 (skipped without it) and the plain loop."""
    if request.param == "avx2" and not _compiled._use_avx2(True):
        pytest.skip("this CPU has no AVX2")
    if request.param == "plain":
        _compiled._use_avx2(False)
    yield request.param
    _compiled._use_avx2(True)


@pytest.fixture
def web_schema(app_factory):
    """The served OpenAPI document as a Schemathesis schema over the in-process application."""
    import schemathesis

    client, _, _ = app_factory()
    return schemathesis.openapi.from_wsgi("/openapi.json", client.app)
