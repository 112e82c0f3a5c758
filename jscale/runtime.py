"""Process-level JAX settings: the persistent compilation cache."""

from __future__ import annotations

from pathlib import Path

import jax

from jscale.data import cache_dir


def enable_compilation_cache(path: str | Path | None = None) -> Path:
    """Turn on JAX's persistent compilation cache (default ``$JSCALE_CACHE_DIR/xla``), so a
    second run of the same program loads its executables instead of recompiling them."""
    where = Path(path) if path else cache_dir() / "xla"
    where.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return where
