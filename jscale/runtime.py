"""Process-level settings: where jscale caches things, and JAX's persistent compilation cache."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def cache_dir() -> Path:
    """jscale's cache directory: ``$JSCALE_CACHE_DIR``, default ``~/.cache/jscale`` (token caches,
    the measured roofline, compiled executables)."""
    return Path(os.environ.get("JSCALE_CACHE_DIR", Path.home() / ".cache" / "jscale"))


def enable_compilation_cache(
    path: str | Path | None = None, min_compile_s: float | None = None
) -> Path:
    """Turn on JAX's persistent compilation cache (default ``cache_dir() / "xla"``), so a
    second run of the same program loads its executables instead of recompiling them.
    Programs that compile faster than ``min_compile_s`` seconds are not stored (default:
    ``$JSCALE_CACHE_MIN_COMPILE_S``, else 0.2)."""
    where = Path(path) if path else cache_dir() / "xla"
    where.mkdir(parents=True, exist_ok=True)
    if min_compile_s is None:
        min_compile_s = float(os.environ.get("JSCALE_CACHE_MIN_COMPILE_S", 0.2))
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
    return where
