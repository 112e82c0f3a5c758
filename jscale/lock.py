"""One writer per results directory: advisory ``flock`` locks, released by the OS when the
holding process ends (a crash or a kill leaves no stale lock behind).

* The directory lock ``OUT/.locks/dir.lock``: a plain sweep holds it exclusively for its whole
  run; the workers of one sweep (``--worker I/N``) hold it shared.  A second plain sweep, a
  plain sweep beside workers, or workers of a different config stop at once with a message
  naming the holder (its pid, host, command and start time, from ``OUT/.locks/holder-*.json``).
* A group lock per training group (a WSD trunk and its branches, or one cosine run) and per
  latency-ladder size: a worker trains or times only what it holds, so two processes given the
  same share never do the same work.
* ``clean_stale_temps``: the ``.NAME.PID.tmp`` files of writers that no longer run (a kill or a
  full disk mid-write) are removed at the start of a run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import socket
import sys
from pathlib import Path

from jscale.config import ConfigError

LOCKS = ".locks"


class BusyError(ConfigError):
    """The results directory is held by another jscale process."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _holders(locks: Path, skip: Path | None = None) -> list[dict]:
    """What the holder files (but ``skip``) say; the files of dead processes on this host are
    removed instead."""
    out, host = [], socket.gethostname()
    for f in sorted(locks.glob("holder-*.json")):
        if f == skip:
            continue
        try:
            h = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if h.get("host") == host and not _alive(int(h.get("pid", -1))):
            f.unlink(missing_ok=True)
            continue
        out.append(h)
    return out


def _describe(h: dict) -> str:
    return (
        f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}: `{h.get('command')}`"
    )


@contextlib.contextmanager
def hold_dir(out_dir: str | os.PathLike, *, shared: bool, identity: str):
    """Hold ``out_dir``'s directory lock for the ``with`` block: exclusive (a plain run) or
    shared (one worker of a sweep).  ``identity``: a digest of the sweep config; shared holders
    must all have the same one.  Raises ``BusyError`` naming the holder(s) when the lock is
    taken (or another worker runs another config)."""
    locks = Path(out_dir) / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / "dir.lock", os.O_RDWR | os.O_CREAT, 0o644)
    me = locks / f"holder-{socket.gethostname()}-{os.getpid()}-{fd}.json"
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            others = _holders(locks) or [{"pid": "?", "host": "?", "command": "?"}]
            raise BusyError(
                f"{out_dir} is in use by another jscale sweep ({'; '.join(map(_describe, others))}"
                "); wait for it to finish, run this config into another out_dir, or share the "
                "work with --worker I/N (workers of one config may run together)"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "shared": shared,
            "identity": identity,
        }
        tmp = me.with_name(f".{me.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, me)
        if shared:
            other = [h for h in _holders(locks, skip=me) if h.get("identity") != identity]
            if other:
                raise BusyError(
                    f"{out_dir} is in use by workers of a different sweep config "
                    f"({'; '.join(map(_describe, other))}); their records would overwrite each "
                    "other: give this config another out_dir"
                )
        yield
    finally:
        me.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def try_group(out_dir: str | os.PathLike, key: str):
    """Try to take the lock of one unit of work ``key`` (a file-name-safe string) without
    waiting: yields True when this process holds it for the ``with`` block, False when another
    process does (the caller skips the unit)."""
    locks = Path(out_dir) / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


_TMP = re.compile(r"\.(\d+)\.tmp(\.[A-Za-z0-9]+)?$")


def clean_stale_temps(out_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``*.PID.tmp``, ``*.PID.tmp.EXT``) under ``out_dir`` whose
    writer process no longer runs; returns the paths removed."""
    removed = []
    for f in Path(out_dir).rglob("*.tmp*"):
        m = _TMP.search(f.name)
        if m and f.is_file() and not _alive(int(m.group(1))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed
