"""Shared fixtures and the test tiers.

The token cache goes to a per-session temporary directory (never ``~/.cache``): the
environment variable is set at import, before any test module imports ``jscale``, and
the session fixture ``cache_dir`` hands the same directory to tests that want to look
inside it.  Under pytest-xdist (``scripts/test.sh`` runs ``-n auto``) the controller makes the
directory and every worker inherits it, so the corpus is tokenized and each program compiled
once per session, not once per worker; the controller removes it at the end.

Tiers: ``@pytest.mark.slow`` marks the tests that train whole sweeps, start subprocesses or
fake a device mesh; ``scripts/test.sh -m "not slow"`` is the fast tier for development.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests compile with XLA's LLVM backend at optimisation level 0: the HLO passes (fusion, layout,
# buffer assignment: what the tests inspect) are unchanged and the maths is the same, but each
# program compiles ~1.5x faster, and the suite is compile-bound.  No test measures speed.  Set
# before JAX is imported; subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

_OWNER = (
    "JSCALE_TEST_CACHE" not in os.environ
)  # the first process of the session (xdist controller)
if _OWNER:
    os.environ["JSCALE_TEST_CACHE"] = tempfile.mkdtemp(prefix="jscale-test-cache-")
_CACHE = Path(os.environ["JSCALE_TEST_CACHE"])
os.environ["JSCALE_CACHE_DIR"] = str(_CACHE)
# Every program the session compiles goes to a session-wide persistent cache, so the many tests
# (and the CLI subprocesses they start) that build the same tiny models load it instead of
# compiling it again.  A cold run still compiles each distinct program once.
os.environ["JSCALE_CACHE_MIN_COMPILE_S"] = "0"

from jscale.runtime import enable_compilation_cache  # noqa: E402  (after the environment is set)

enable_compilation_cache()

if _OWNER:  # no test spends time autotuning: every format runs as trained unless a test says so
    from jscale import autotune, formulation, precision, roofline  # noqa: E402

    # nor measuring the machine (2048^3 matmuls, 512 MiB streams: ~9 s of both cores): the
    # bounds in test records are computed from these rates, and no test asserts a speed
    roofline.store(
        {
            "matmul_flops_per_s": 1e11,
            "matmul_bf16_flops_per_s": 4e11,
            "matmul_int8_flops_per_s": 8e11,
            "bandwidth_bytes_per_s": 2e10,
            "read_bandwidth_bytes_per_s": 2e10,
            "cache_bytes": 32 * 2**20,
        }
    )

    for _name in precision.names():
        for _klass in formulation.SHAPE_CLASSES:
            autotune.store(
                precision.get_policy(_name).fmt,
                _klass,
                {f.name: {"ms": 1.0 + i} for i, f in enumerate(formulation.CANDIDATES)},
            )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: trains sweeps, starts subprocesses or fakes devices (deselect: -m 'not slow')",
    )


@pytest.fixture(scope="session", autouse=True)
def cache_dir():
    """The session's cache directory (``$JSCALE_CACHE_DIR``); removed at the end by its owner."""
    os.environ["JSCALE_CACHE_DIR"] = str(_CACHE)
    yield _CACHE


def pytest_unconfigure(config):
    if _OWNER:
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def corpus(cache_dir):
    """The default corpus (the standard library's .py files), loaded once per session."""
    from jscale import data

    return data.load_corpus()


# Longest modules first, so that `-n auto --dist loadfile` (scripts/test.sh) hands each worker a
# long module early and fills in with the short ones: the run ends when the busiest worker does.
_LONGEST_FIRST = (
    "test_sweep",
    "test_sweep_wsd",
    "test_multihost",
    "test_sharding",
    "test_analysis",
    "test_figures",
    "test_fit_identification",
    "test_cli",
    "test_precision",
    "test_latency",
    "test_train",
    "test_faults_sweep",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))
