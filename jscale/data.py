"""Byte-level text corpora: the embedded default, user files and directories, batches.

Tokens are bytes (vocab 256).  Byte 0x00 never occurs in text, so it is the one special
token: it separates documents (files).  Files that contain a NUL byte are binary and skipped.

The default corpus is the ``.py`` source of the running Python's standard library (found
through ``sysconfig``), ~30 MB on CPython 3.11: real text on every machine, no download.
Files are split into train and validation by a hash of their relative path, so the split
is deterministic and independent of file order.  Tokens are cached on disk (one ``.npy``
per split, memory-mapped on load) under ``$JSCALE_CACHE_DIR`` (default
``~/.cache/jscale``), keyed by a fingerprint of the files' paths, sizes and mtimes.  The cache's
``meta.json`` holds a digest of each ``.npy``, checked on every load: a garbled, truncated or
missing cache file is rebuilt from the corpus.  Cache files are no more readable than the
corpus files they come from.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
import sysconfig
import zlib
from pathlib import Path

import numpy as np

from jscale.runtime import cache_dir

VOCAB_SIZE = 256
SEPARATOR = 0  # the document-separator token
_FORMAT = 1  # bump when the cache layout changes


class CorpusError(ValueError):
    """A corpus that is missing, empty or unreadable; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Token arrays (uint8, memory-mapped) of one corpus and where they came from.

    train, val: 1-D uint8 token arrays (``val`` is the held-out part: its halves are ``select``
    and ``test``).  name: the source path.  fingerprint: hash of the
    file list (paths, sizes, mtimes) and split.  n_files_train, n_files_val: files per split.
    """

    train: np.ndarray
    val: np.ndarray
    name: str
    fingerprint: str
    n_files_train: int
    n_files_val: int

    @functools.cached_property
    def _heldout_cut(self) -> int:
        seps = np.flatnonzero(np.asarray(self.val) == SEPARATOR)
        mid = len(self.val) // 2
        return int(seps[np.argmin(np.abs(seps - mid))]) if seps.size else mid

    @property
    def select(self) -> np.ndarray:
        """The model-selection split: the held-out documents before the separator nearest the
        middle of ``val`` (its first half, when it is one document).  Learning rates are chosen
        and loss curves sampled on it; the test loss is never looked at to choose."""
        return self.val[: self._heldout_cut]

    @property
    def test(self) -> np.ndarray:
        """The test split: the held-out documents after the cut (``eval_loss_nats``)."""
        return self.val[self._heldout_cut :]

    def unigram_entropy_bits(self) -> float:
        """Entropy of the byte distribution of the validation split, in bits/byte."""
        counts = np.bincount(np.asarray(self.val), minlength=VOCAB_SIZE).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log2(p)).sum())


def default_corpus_path() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _unreadable(path, e: OSError) -> CorpusError:
    why = "permission denied" if isinstance(e, PermissionError) else e.strerror or str(e)
    return CorpusError(f"cannot read corpus {path} ({why}); check its permissions")


def _list_files(root: Path, default: bool) -> list[Path]:
    if not root.exists():
        raise CorpusError(f"corpus path does not exist: {root}")
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise CorpusError(f"corpus path is neither a file nor a directory: {root}")

    def fail(e: OSError):  # an unreadable directory is an error, not an empty one
        where = Path(e.filename or root)
        if not default or where == root:  # the default corpus skips what it cannot read
            raise _unreadable(f"directory {where}", e)

    files = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        if default:
            dirnames[:] = [d for d in dirnames if d != "site-packages"]
            files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files += [
                p
                for p in (Path(dirpath, f) for f in filenames if not f.startswith("."))
                if p.is_file()
            ]
    return sorted(files)


def _is_val(rel: str, val_percent: float) -> bool:
    return zlib.crc32(rel.encode()) % 10_000 < val_percent * 100


def load_corpus(
    path: str | os.PathLike | None = None, *, val_percent: float = 2.0, cache: Path | None = None
) -> Corpus:
    """Load (building the token cache on first use) a byte-level corpus.

    path: a text file or a directory of text files (all regular, non-hidden files; binary
    files are skipped); None means the default corpus (the standard library's ``.py`` files).
    val_percent: share of files (by path hash) held out for validation; a single-file corpus,
    or a directory whose hashed split would hold out under 1 KiB, holds out the last
    ``val_percent`` % of its bytes instead.
    """
    if path is not None and str(path).strip() == "":
        raise CorpusError(
            "corpus path is empty; give a text file or directory, or omit it for the default corpus"
        )
    if not 0 < val_percent < 100:
        raise CorpusError(f"val_percent must be in (0, 100), got {val_percent!r}")
    default = path is None
    root = (default_corpus_path() if default else Path(path)).expanduser().resolve()
    files = _list_files(root, default)
    if not files:
        raise CorpusError(f"corpus {root} contains no {'.py ' if default else ''}files")
    h = hashlib.sha256(f"{_FORMAT}|{float(val_percent)}|{root}".encode())
    mode = 0o666  # cache files are no more readable than the least readable corpus file
    for f in files:
        try:
            st = f.stat()
        except OSError as e:
            raise _unreadable(f"file {f}", e) from e
        mode &= st.st_mode
        h.update(
            (
                f"|{f.relative_to(root) if f != root else f.name}|{st.st_size}|{st.st_mtime_ns}"
            ).encode()
        )
    fp = h.hexdigest()[:16]
    where = (cache or cache_dir()) / "corpora" / fp
    cached = _load_cache(where)
    if cached is None:  # absent, or garbled / truncated / from an older jscale: (re)build it
        _build_cache(root, files, val_percent, where, mode)
        cached = _load_cache(where)
        if cached is None:
            raise CorpusError(f"token cache {where} does not read back after building it")
    _restrict(where, mode)
    meta, train, val = cached
    return Corpus(
        train=train,
        val=val,
        name=str(root),
        fingerprint=fp,
        n_files_train=meta["n_files_train"],
        n_files_val=meta["n_files_val"],
    )


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def _load_cache(where: Path):
    """(meta, train, val) of the token cache in ``where``, or None when it is absent or does
    not match the digests in its ``meta.json`` (garbled, truncated, empty, or written by an older
    jscale): then it is rebuilt."""
    try:
        meta = json.loads((where / "meta.json").read_text())
        arrays = []
        for split in ("train", "val"):
            path = where / f"{split}.npy"
            if _digest(path) != meta["digest"][split]:
                return None
            arrays.append(np.load(path, mmap_mode="r"))
        meta["n_files_train"], meta["n_files_val"] = (
            int(meta["n_files_train"]),
            int(meta["n_files_val"]),
        )
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return meta, *arrays


def _restrict(where: Path, mode: int) -> None:
    """Make the cache in ``where`` at most as readable as the corpus files (``mode``: their
    common permission bits): files keep only the group / other read bits the corpus has (the
    owner always reads and writes), the directory only the matching read and search bits."""
    file_mode = (mode & 0o644) | 0o600
    _tighten(where, 0o700 | (file_mode & 0o044) | ((file_mode & 0o044) >> 2))
    for p in where.iterdir():
        _tighten(p, file_mode)


def _tighten(path: Path, allowed: int) -> None:
    """Clear the permission bits of ``path`` that ``allowed`` lacks (never adds any)."""
    try:
        m = path.stat().st_mode & 0o777
        if m & ~allowed:
            os.chmod(path, m & allowed)
    except OSError:  # gone (another builder's temporary file) or not ours to change
        pass


def _read(f: Path) -> bytes | None:
    try:
        data = f.read_bytes()
    except OSError as e:
        raise _unreadable(f"file {f}", e) from e
    return None if b"\x00" in data else data


def _build_cache(
    root: Path, files: list[Path], val_percent: float, where: Path, mode: int = 0o644
) -> None:
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    if root.is_file():
        data = _read(root)
        if data is None:
            raise CorpusError(f"corpus file {root} is binary (contains NUL bytes), not text")
        cut = len(data) - int(len(data) * val_percent / 100)
        parts["train"], parts["val"] = [data[:cut]], [data[cut:]]
    else:
        for f in files:
            data = _read(f)
            if data:  # skip binary (None) and empty files
                parts["val" if _is_val(str(f.relative_to(root)), val_percent) else "train"].append(
                    data
                )
    n_bytes = {k: sum(map(len, v)) for k, v in parts.items()}
    if not root.is_file() and n_bytes["val"] < 1024 and n_bytes["train"] + n_bytes["val"] > 0:
        # too few files for a split by file (e.g. one big file in a directory): hold out the
        # last val_percent % of the bytes of the whole corpus instead, like a single file
        data = bytes([SEPARATOR]).join(parts["train"] + parts["val"])
        cut = len(data) - int(len(data) * val_percent / 100)
        parts = {"train": [data[:cut]], "val": [data[cut:]]}
        n_bytes = {k: sum(map(len, v)) for k, v in parts.items()}
    if n_bytes["train"] == 0:
        raise CorpusError(f"corpus {root} has no text: every file is empty or binary")
    if n_bytes["val"] < 1024:
        raise CorpusError(
            f"corpus {root} is too small: its validation split has {n_bytes['val']} "
            f"bytes (need >= 1024); add text or raise val_percent (--val-percent)"
        )
    meta = {
        "root": str(root),
        "n_files_train": len(parts["train"]),
        "n_files_val": len(parts["val"]),
        "n_tokens_train": n_bytes["train"],
        "n_tokens_val": n_bytes["val"],
        "val_percent": val_percent,
        "digest": {},
    }
    try:
        where.mkdir(parents=True, exist_ok=True)
        _restrict(where, mode)
        for split, docs in parts.items():
            tokens = np.frombuffer(bytes([SEPARATOR]).join(docs), dtype=np.uint8)
            tmp = where / f"{split}.{os.getpid()}.tmp.npy"  # per process: builders never share
            np.save(tmp, tokens)
            meta["digest"][split] = _digest(tmp)
            _tighten(tmp, (mode & 0o644) | 0o600)
            os.replace(tmp, where / f"{split}.npy")
        tmp = where / f"meta.{os.getpid()}.tmp.json"
        tmp.write_text(json.dumps(meta, indent=1))
        _tighten(tmp, (mode & 0o644) | 0o600)
        os.replace(tmp, where / "meta.json")  # written last: its presence means it is complete
    except OSError as e:
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise  # the disk is full: the command line says so
        raise CorpusError(
            f"cannot write the token cache in {where} ({e.strerror or e}); "
            "set JSCALE_CACHE_DIR to a writable directory"
        ) from e


def train_batch(
    tokens: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int
) -> np.ndarray:
    """Batch ``[batch_size, seq_len + 1]`` (int32) of random windows of ``tokens``.

    A pure function of (seed, step): the window starts come from a NumPy generator seeded
    with ``(seed, step)``, so any step's batch can be recomputed without replaying the run.
    """
    n = len(tokens) - seq_len  # number of valid window starts
    if n <= 0:
        raise CorpusError(f"training split has {len(tokens)} tokens, too few for seq_len={seq_len}")
    starts = np.random.default_rng([seed, step]).integers(0, n, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len + 1)
    return np.asarray(tokens[idx], dtype=np.int32)


def eval_batches(tokens: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """The fixed held-out set: ``[n_seq, seq_len + 1]`` (int32) windows of ``tokens``.

    The split is cut into ``n_avail = (len - 1) // seq_len`` non-overlapping windows (each
    token predicted at most once); ``n_seq = min(n_tokens // seq_len, n_avail)`` of them,
    evenly spaced over the whole split, form the set, so a small budget still samples every
    part (every file) of the split.  The same for every run and model.
    """
    starts = _eval_starts(tokens, seq_len, n_tokens)
    idx = starts[:, None] + np.arange(seq_len + 1)
    return np.asarray(tokens[idx], dtype=np.int32)


def eval_documents(tokens: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """The document (file) of each window of ``eval_batches(tokens, seq_len, n_tokens)``:
    ``[n_seq]`` ints, the number of separators before the window's first token.  Windows of one
    file share its style and vocabulary, so their losses are correlated: standard errors over
    windows should be clustered by these ids (``evaluate.clustered_se``)."""
    seps = np.flatnonzero(np.asarray(tokens) == SEPARATOR)
    return np.searchsorted(seps, _eval_starts(tokens, seq_len, n_tokens), side="right")


def _eval_starts(tokens: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """First token of each held-out window: ``n_seq`` evenly spaced non-overlapping windows."""
    n_avail = (len(tokens) - 1) // seq_len
    n_seq = min(n_tokens // seq_len, n_avail)
    if n_seq < 1:
        raise CorpusError(
            f"held-out set would be empty: {len(tokens)} validation tokens and an "
            f"eval budget of {n_tokens} tokens, with seq_len={seq_len}"
        )
    return (np.arange(n_seq) * n_avail // n_seq) * seq_len
