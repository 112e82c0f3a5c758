"""Shared fixtures.

The token cache goes to a per-session temporary directory (never ``~/.cache``): the
environment variable is set at import, before any test module imports ``jscale``, and
the session fixture ``cache_dir`` hands the same directory to tests that want to look
inside it.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_CACHE = Path(tempfile.mkdtemp(prefix="jscale-test-cache-"))
os.environ["JSCALE_CACHE_DIR"] = str(_CACHE)


@pytest.fixture(scope="session", autouse=True)
def cache_dir():
    """The session's token-cache directory (``$JSCALE_CACHE_DIR``); removed at the end."""
    os.environ["JSCALE_CACHE_DIR"] = str(_CACHE)
    yield _CACHE
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def corpus(cache_dir):
    """The default corpus (the standard library's .py files), loaded once per session."""
    from jscale import data

    return data.load_corpus()
