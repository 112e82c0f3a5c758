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

A corpus may instead be pre-tokenized (``load_token_files``; ``jscale tokenize`` writes one): a
directory with ``train`` and ``val`` token files (``.bin``: flat little-endian ids, the nanoGPT
convention; or ``.npy``) and a ``tokens.json`` giving the vocabulary size, dtype, tokenizer name,
document separator and the bytes of text each id stands for (``token_bytes``, for bits per byte).
Token files are memory-mapped and never copied.
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
SEPARATOR = 0  # the document-separator token of byte corpora
_FORMAT = 1  # bump when the cache layout changes
TOKENS_META = "tokens.json"  # the metadata file of a token directory
TOKEN_DTYPES = ("uint8", "uint16", "uint32")
_SUFFIXES = (".bin", ".npy")
MIN_HELDOUT_BYTES = 1024  # the smallest held-out split, in bytes of text (jscale tokenize too)


def byte_token_bytes() -> np.ndarray:
    """Bytes of text per token of a byte corpus: ``[256]`` int64, 1 except the separator (0)."""
    tb = np.ones(VOCAB_SIZE, np.int64)
    tb[SEPARATOR] = 0
    return tb


class CorpusError(ValueError):
    """A corpus that is missing, empty or unreadable; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Token arrays (memory-mapped) of one corpus and where they came from.

    train, val: 1-D token arrays (uint8 for bytes; uint8/16/32 for token files); ``val`` is the
    held-out part: its halves are ``select`` and ``test``.  name: the source path.
    fingerprint: hash of the file list (paths, sizes, mtimes) and split.  n_files_train,
    n_files_val: documents (files) per split, -1 when unknown.  vocab_size: ids are in
    ``[0, vocab_size)``.  tokenizer: ``"bytes"`` or the token files' tokenizer name.  separator:
    the document-separator id (None: the corpus marks no documents).  token_bytes: ``[vocab_size]``
    int64, bytes of text each id stands for (separator and special tokens 0), or None when the
    token files do not say (then bits per byte cannot be computed).  files: the token file of
    each split (``{}`` for text corpora), for error messages.  digest: content hash of token
    files (None for text corpora: ``sweep.corpus_digest`` hashes the arrays).
    """

    train: np.ndarray
    val: np.ndarray
    name: str
    fingerprint: str
    n_files_train: int
    n_files_val: int
    vocab_size: int = VOCAB_SIZE
    tokenizer: str = "bytes"
    separator: int | None = SEPARATOR
    token_bytes: np.ndarray | None = dataclasses.field(default_factory=byte_token_bytes)
    files: dict = dataclasses.field(default_factory=dict)
    digest: str | None = None

    @functools.cached_property
    def _heldout_cut(self) -> int:
        """The separator nearest the middle of ``val`` measured as the byte corpus of the same
        text measures it (each token its bytes of text, each separator one byte), so a token
        corpus made from a text directory cuts between the same documents as its byte corpus."""
        mid = len(self.val) // 2
        if self.separator is None:
            return mid
        seps, offsets, total = _separator_offsets(self.val, self.separator, self.token_bytes)
        if not seps.size:
            return mid
        return int(seps[np.argmin(np.abs(offsets - total // 2))])

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

    def where(self, split: str) -> str:
        """The file (token corpora) or corpus and split that ``split`` comes from, for errors."""
        return str(self.files[split]) if split in self.files else f"{self.name} ({split} split)"

    def unigram_entropy_bits(self) -> float:
        """Entropy of the token distribution of the validation split, in bits/token (bits/byte
        for a byte corpus)."""
        counts = np.bincount(np.asarray(self.val), minlength=self.vocab_size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log2(p)).sum())

    def bytes_per_token(self) -> float:
        """Bytes of text per token of the validation split (nan without ``token_bytes``)."""
        if self.token_bytes is None:
            return float("nan")
        return float(self.token_bytes[np.asarray(self.val)].sum() / max(len(self.val), 1))


def _separator_offsets(tokens, separator: int, token_bytes, chunk: int = 1 << 24):
    """``(positions, offsets, total)``: the separators' token positions in ``tokens``, their
    offsets in the byte corpus of the same text (text bytes before them, each separator one
    byte; without ``token_bytes`` one per token) and that corpus's length.  Read in chunks, so a
    large held-out split needs no array of its size."""
    pos, off, carry = [], [], 0
    for start in range(0, len(tokens), chunk):
        part = np.asarray(tokens[start : start + chunk])
        here = np.flatnonzero(part == separator)
        if token_bytes is None:
            w = np.ones(len(part), np.int64)
        else:
            w = np.asarray(token_bytes, np.int64)[part]
            w[here] = 1
        before = np.cumsum(w) - w
        pos.append(here + start)
        off.append(before[here] + carry)
        carry += int(w.sum())
    if not pos:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    return np.concatenate(pos), np.concatenate(off), carry


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
    files are skipped); None means the default corpus (the standard library's ``.py`` files);
    a token directory or token file (``is_token_source``) is read by ``load_token_files``.
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
    if not default and is_token_source(root):
        return load_token_files(root, val_percent=val_percent, cache=cache)
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
    small = n_bytes["val"] < MIN_HELDOUT_BYTES
    if not root.is_file() and small and n_bytes["train"] + n_bytes["val"] > 0:
        # too few files for a split by file (e.g. one big file in a directory): hold out the
        # last val_percent % of the bytes of the whole corpus instead, like a single file
        data = bytes([SEPARATOR]).join(parts["train"] + parts["val"])
        cut = len(data) - int(len(data) * val_percent / 100)
        parts = {"train": [data[:cut]], "val": [data[cut:]]}
        n_bytes = {k: sum(map(len, v)) for k, v in parts.items()}
    if n_bytes["train"] == 0:
        raise CorpusError(f"corpus {root} has no text: every file is empty or binary")
    if n_bytes["val"] < MIN_HELDOUT_BYTES:
        raise CorpusError(
            f"corpus {root} is too small: its validation split has {n_bytes['val']} "
            f"bytes (need >= {MIN_HELDOUT_BYTES}); add text or raise val_percent (--val-percent)"
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


# --------------------------------------------------------------------------- token files


def is_token_source(path: Path) -> bool:
    """Whether ``path`` is pre-tokenized: a directory holding ``tokens.json`` or a ``train.bin``
    / ``train.npy`` (so a text directory must not hold those names), or a ``.bin`` / ``.npy``
    file."""
    if path.is_dir():
        return (path / TOKENS_META).exists() or any(
            (path / f"train{s}").exists() for s in _SUFFIXES
        )
    return path.is_file() and path.suffix in _SUFFIXES


def corpus_vocab_size(path: str | os.PathLike | None) -> int:
    """The vocabulary a corpus path brings: a token corpus's ``vocab_size`` (from its
    ``tokens.json`` alone, without opening the token files), else 256 (bytes)."""
    if not path or not is_token_source(Path(path).expanduser()):
        return VOCAB_SIZE
    return read_token_meta(Path(path).expanduser())["vocab_size"]


def _meta_error(meta_path: Path, field: str, what: str) -> CorpusError:
    return CorpusError(f"{meta_path}: {field} {what}")


def read_token_meta(root: Path) -> dict:
    """The validated ``tokens.json`` of the token directory ``root`` (or of a token file's
    directory): ``vocab_size`` (int >= 2), ``tokenizer`` (str), ``dtype`` (``uint8`` / ``uint16``
    / ``uint32``; required for ``.bin`` files), ``separator`` (id or null) and ``token_bytes``
    (file name in the directory, or null).  ``CorpusError`` naming the file and field."""
    directory = root if root.is_dir() else root.parent
    meta_path = directory / TOKENS_META
    if not meta_path.is_file():
        raise CorpusError(
            f"token corpus {root} has no {TOKENS_META} next to its token files: write one with "
            '{"vocab_size": V, "dtype": "uint16", "tokenizer": "NAME"} (docs/data.md), '
            "or make the directory with `jscale tokenize`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorpusError(f"{meta_path} is not readable JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CorpusError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format", "jscale-tokens") != "jscale-tokens" or meta.get("version", 1) != 1:
        raise _meta_error(meta_path, "format/version", 'must be "jscale-tokens" / 1')
    v = meta.get("vocab_size")
    if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 2**31:
        raise _meta_error(meta_path, "vocab_size", f"must be an integer in [2, 2^31], got {v!r}")
    if not isinstance(meta.get("tokenizer"), str) or not meta["tokenizer"].strip():
        raise _meta_error(
            meta_path, "tokenizer", f"must be a non-empty name, got {meta.get('tokenizer')!r}"
        )
    dt = meta.get("dtype")
    if dt is not None and dt not in TOKEN_DTYPES:
        raise _meta_error(
            meta_path, "dtype", f"must be one of {', '.join(TOKEN_DTYPES)}, got {dt!r}"
        )
    if dt is not None and v > np.iinfo(dt).max + 1:
        raise _meta_error(meta_path, "dtype", f"{dt} cannot hold ids of a {v}-token vocabulary")
    sep = meta.get("separator")
    if sep is not None and (isinstance(sep, bool) or not isinstance(sep, int) or not 0 <= sep < v):
        raise _meta_error(meta_path, "separator", f"must be null or an id in [0, {v}), got {sep!r}")
    tb = meta.get("token_bytes")
    if tb is not None and (not isinstance(tb, str) or not (directory / tb).is_file()):
        raise _meta_error(
            meta_path, "token_bytes", f"must be null or a file in {directory}, got {tb!r}"
        )
    return {**meta, "_path": meta_path, "_dir": directory}


def _open_tokens(path: Path, dtype: str | None) -> np.ndarray:
    """Memory-map one token file; ``CorpusError`` naming it for a wrong dtype or size."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 1 or arr.dtype.name not in TOKEN_DTYPES:
                raise CorpusError(
                    f"token file {path} holds {arr.dtype.name} {list(arr.shape)}; token files "
                    f"must be 1-D {', '.join(TOKEN_DTYPES)}"
                )
            if dtype is not None and arr.dtype.name != dtype:
                raise CorpusError(
                    f"token file {path} holds {arr.dtype.name} but {TOKENS_META} says {dtype}"
                )
            return arr
        if dtype is None:
            raise CorpusError(f"{TOKENS_META} for {path} must give dtype (.bin files do not)")
        size, item = path.stat().st_size, np.dtype(dtype).itemsize
        if size % item:
            raise CorpusError(
                f"token file {path} has {size} bytes, not a multiple of {item} ({dtype}): "
                "wrong dtype in tokens.json, or a truncated file"
            )
        if size == 0:
            return np.zeros(0, dtype)
        return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    except CorpusError:
        raise
    except OSError as e:
        raise _unreadable(f"token file {path}", e) from e
    except ValueError as e:  # np.load on a file that is not .npy
        raise CorpusError(f"token file {path} is not a valid .npy file ({e})") from e


def _scan(path: Path, arr: np.ndarray, cache: Path) -> dict:
    """``{"max_id", "sha1"}`` of a token file, read once in 64 Mi-token chunks and cached by its
    path, size, mtime and dtype (an 8e9-token file costs one pass, not one per run)."""
    st = path.stat()
    key = hashlib.sha256(
        f"{path}|{st.st_size}|{st.st_mtime_ns}|{arr.dtype.str}".encode()
    ).hexdigest()[:24]
    memo = cache / "token-scans" / f"{key}.json"
    try:
        return json.loads(memo.read_text())
    except (OSError, ValueError):
        pass
    h, top, chunk = hashlib.sha1(), -1, 1 << 26
    for start in range(0, len(arr), chunk):
        part = np.ascontiguousarray(arr[start : start + chunk])
        top = max(top, int(part.max()))
        h.update(part.data)
    out = {"max_id": top, "sha1": h.hexdigest()}
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{key}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, memo)
    except OSError:  # an unwritable cache only costs the next run another pass
        pass
    return out


def load_token_files(
    path: str | os.PathLike, *, val_percent: float = 2.0, cache: Path | None = None
) -> Corpus:
    """A pre-tokenized corpus: a directory with ``train.{bin,npy}``, ``val.{bin,npy}`` and
    ``tokens.json``, or one token file (``.bin`` / ``.npy``, with ``tokens.json`` beside it)
    whose last ``val_percent`` % of tokens are held out.

    Files are memory-mapped, never loaded whole.  Each is checked once (cached by path, size,
    mtime and dtype: ``_scan``): ids must be below ``vocab_size``.  ``CorpusError`` (one line,
    naming the file) for a missing ``tokens.json`` or split, a dtype that does not match, a
    size that is not a whole number of ids, or an id beyond the vocabulary.
    """
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise CorpusError(f"corpus path does not exist: {root}")
    meta = read_token_meta(root)
    cache = (cache or cache_dir()) / "corpora"
    if root.is_dir():
        files = {}
        for split in ("train", "val"):
            found = [root / f"{split}{s}" for s in _SUFFIXES if (root / f"{split}{s}").is_file()]
            if len(found) != 1:
                raise CorpusError(
                    f"token directory {root} must hold exactly one of {split}.bin, {split}.npy; "
                    f"found {len(found)}"
                )
            files[split] = found[0]
        opened = {f: _open_tokens(f, meta.get("dtype")) for f in files.values()}
        arrays = {k: opened[f] for k, f in files.items()}
    else:
        whole = _open_tokens(root, meta.get("dtype"))
        cut = len(whole) - int(len(whole) * val_percent / 100)
        files, opened = {"train": root, "val": root}, {root: whole}
        arrays = {"train": whole[:cut], "val": whole[cut:]}
    v = meta["vocab_size"]
    identity = {k: meta.get(k) for k in ("vocab_size", "tokenizer", "separator")}
    identity["dtype"] = {k: a.dtype.str for k, a in arrays.items()}
    sha = hashlib.sha1(json.dumps(identity, sort_keys=True).encode())
    for split, f in files.items():
        if len(arrays[split]) == 0:
            raise CorpusError(f"token file {f} holds no tokens ({split} split)")
    for f, whole in opened.items():
        scan = _scan(f, whole, cache)
        if scan["max_id"] >= v:
            raise CorpusError(
                f"token file {f} holds id {scan['max_id']}, beyond the vocabulary "
                f"(vocab_size {v} in {meta['_path']})"
            )
        sha.update(scan["sha1"].encode())
    if not root.is_dir():
        sha.update(f"|{float(val_percent)}".encode())
    token_bytes = None
    if meta.get("token_bytes"):
        tb_path = meta["_dir"] / meta["token_bytes"]
        try:
            token_bytes = np.load(tb_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CorpusError(f"{tb_path} is not a readable .npy file ({e})") from e
        if token_bytes.shape != (v,) or token_bytes.dtype.kind not in "iu" or token_bytes.min() < 0:
            raise CorpusError(
                f"{tb_path} must be [{v}] non-negative integers (bytes per id), got "
                f"{token_bytes.dtype.name} {list(token_bytes.shape)}"
            )
        token_bytes = token_bytes.astype(np.int64)
        sha.update(b"|token_bytes|" + np.ascontiguousarray(token_bytes).data)
    docs = meta.get("documents") if isinstance(meta.get("documents"), dict) else {}
    return Corpus(
        train=arrays["train"],
        val=arrays["val"],
        name=str(root),
        fingerprint=sha.hexdigest()[:16],
        n_files_train=int(docs.get("train", -1)),
        n_files_val=int(docs.get("val", -1)),
        vocab_size=v,
        tokenizer=meta["tokenizer"],
        separator=meta.get("separator"),
        token_bytes=token_bytes,
        files=files,
        digest=sha.hexdigest()[:16],
    )


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


def eval_documents(
    tokens: np.ndarray, seq_len: int, n_tokens: int, separator: int | None = SEPARATOR
) -> np.ndarray:
    """The document (file) of each window of ``eval_batches(tokens, seq_len, n_tokens)``:
    ``[n_seq]`` ints, the number of separators before the window's first token.  Windows of one
    file share its style and vocabulary, so their losses are correlated: standard errors over
    windows should be clustered by these ids (``evaluate.clustered_se``).  ``separator``: the
    corpus's separator id (``Corpus.separator``); None (no documents marked): each window is
    its own document."""
    starts = _eval_starts(tokens, seq_len, n_tokens)
    if separator is None:
        return np.arange(len(starts))
    seps = np.flatnonzero(np.asarray(tokens) == separator)
    return np.searchsorted(seps, starts, side="right")


def window_bytes(batches_NxT1: np.ndarray, token_bytes: np.ndarray | None) -> np.ndarray:
    """Bytes of text predicted in each window ``[N, T+1]`` (its last T tokens): ``[N]`` int64.
    ``token_bytes`` None (token files whose ``tokens.json`` does not say): ``[N]`` NaN, so bits
    per byte come out NaN rather than a number that assumes one byte per token."""
    if token_bytes is None:
        return np.full(len(batches_NxT1), np.nan)
    return np.asarray(token_bytes)[np.asarray(batches_NxT1)[:, 1:]].sum(axis=1)


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
