"""Process-level settings: where jscale caches things, and JAX's persistent compilation cache."""

from __future__ import annotations

import os
from pathlib import Path

import jax


class CacheError(ValueError):
    """A cache directory that is unsafe to use (another user can write to it); the message
    says how to fix it."""


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
    ``$JSCALE_CACHE_MIN_COMPILE_S``, else 0.2).

    The cache holds native code that JAX runs, so it must be private: a directory (or its
    parent, unless that is sticky like ``/tmp``) that another user owns or can write to raises
    ``CacheError`` saying how to fix it.  Directories it creates are ``0o700``."""
    where = Path(path) if path else cache_dir() / "xla"
    where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    where.mkdir(mode=0o700, exist_ok=True)
    _check_private(where)
    if min_compile_s is None:
        min_compile_s = float(os.environ.get("JSCALE_CACHE_MIN_COMPILE_S", 0.2))
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
    return where


def _check_private(where: Path) -> None:
    """``CacheError`` unless ``where`` is owned by this user and writable by no one else, and its
    parent is writable by no one else or is sticky (only an entry's owner may rename it)."""
    if not hasattr(os, "getuid"):  # no POSIX owners and modes (Windows)
        return
    for d, strict in ((where, True), (where.parent, False)):
        st = d.stat()
        shared = st.st_mode & 0o022 and (strict or not st.st_mode & 0o1000)
        if (strict and st.st_uid != os.getuid()) or shared:
            why = (
                f"mode {st.st_mode & 0o7777:o}: writable by other users"
                if shared
                else (f"owned by uid {st.st_uid}, not you (uid {os.getuid()})")
            )
            raise CacheError(
                f"compilation cache {where}: {d} is not private ({why}); it holds native code "
                f"that jscale runs. Run `chmod go-w {d}` (as its owner), or set JSCALE_CACHE_DIR "
                "to a directory of your own"
            )
