"""Shared fixtures. Every codec test runs on both implementations: the Cython extension and
its pure-Python twin (the reference)."""

import importlib

import pytest

IMPLEMENTATIONS = ["python", "cython"]


def load_codec(name: str):
    """The codec module of one implementation. The Cython one must be built: a missing
    extension fails the tests instead of silently testing the twin twice."""
    if name == "python":
        return importlib.import_module("trackside._native._twin")
    try:
        return importlib.import_module("trackside._native._codec")
    except ImportError as e:  # pragma: no cover - a broken build
        pytest.fail(f"the Cython codec is not built ({e}); run: pip install -e .")


@pytest.fixture(params=IMPLEMENTATIONS)
def codec(request):
    return load_codec(request.param)
