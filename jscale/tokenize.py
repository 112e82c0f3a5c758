"""Text to token files through a byte-level BPE (``jscale tokenize``; docs/tokenize.md).

``tokenize(source, out_dir)`` reads documents from text files, Parquet files or a directory
written by ``datasets.Dataset.save_to_disk``, trains a byte-level BPE on the training split (or
loads a ``tokenizer.json``) and writes the token directory ``jscale.data.load_corpus`` reads:
``train.bin`` / ``val.bin`` (little-endian ids, each split's documents joined by the separator
``<|endoftext|>``), ``token_bytes.npy``, ``tokenizer.json`` and, last, ``tokens.json``.

Needs the optional extra ``jscale[tokenize]`` (Hugging Face tokenizers; pyarrow for Parquet and
Arrow sources), imported only when called.  Nothing is downloaded.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from jscale import data

SEPARATOR_TOKEN = "<|endoftext|>"
_BATCH_CHARS = 1 << 22  # characters of text per encode_batch call
_CHUNK_CHARS = 1 << 20  # longer documents are encoded in pieces cut at line breaks
_LINE_CUT = re.compile(r"(?<=\S)\n(?=\S)")  # where GPT-2's pre-tokenizer splits anyway
_LOG_EVERY_S = 10.0


class TokenizeError(ValueError):
    """A source, tokenizer or output directory that cannot be used; one line naming it."""


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TokenizeError(
            f"jscale tokenize needs the optional extra: pip install 'jscale[tokenize]' "
            f"({module} missing)"
        ) from e


def byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table: the character a byte-level BPE writes for
    each byte -> the byte (256 entries).  Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves; the other 68 bytes, in order, for chr(256 + n)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(shifted)}


# --------------------------------------------------------------------------- sources

Docs = Callable[[], Iterator[tuple[str, str]]]  # a fresh pass: (key, text) of each document


def _text_docs(root: Path, default: bool, val_percent: float) -> Docs:
    """One document per file (``data._read``: binary files skipped), decoded as UTF-8 (invalid
    bytes become U+FFFD), keyed by the path relative to ``root``.  Training files come first,
    then held-out ones, each sorted: the byte corpus's order, so a cut by position matches."""
    files = data._list_files(root, default)
    keyed = [(f.name if f == root else str(f.relative_to(root)), f) for f in files]
    keyed.sort(key=lambda kf: data._is_val(kf[0], val_percent))  # stable: sorted within a split

    def docs():
        for key, f in keyed:
            raw = data._read(f)
            if raw:
                yield key, raw.decode("utf-8", errors="replace")

    return docs


def _row_docs(files: list[tuple[str, Path]], column: str, stream: bool) -> Docs:
    """One document per non-empty row of ``column`` of Parquet files (``stream=False``) or Arrow
    IPC stream files, keyed ``"{file}:{row}"``, read one record batch at a time."""
    pa = _need("pyarrow")
    import pyarrow.ipc
    import pyarrow.parquet

    def check(path: Path, schema) -> None:
        if column not in schema.names:
            raise TokenizeError(
                f"{path} has no column {column!r}; its columns: {', '.join(schema.names)} "
                "(choose one with --text-column)"
            )
        kind = schema.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise TokenizeError(f"{path}: column {column!r} holds {kind}, not strings")

    def batches(path: Path) -> Iterator[list]:
        try:
            if stream:
                with pa.memory_map(str(path)) as f:
                    reader = pyarrow.ipc.open_stream(f)
                    check(path, reader.schema)
                    yield from (b.column(column).to_pylist() for b in reader)
            else:
                pf = pyarrow.parquet.ParquetFile(path)
                check(path, pf.schema_arrow)
                yield from (
                    b.column(0).to_pylist() for b in pf.iter_batches(1024, columns=[column])
                )
        except (pa.ArrowException, OSError) as e:
            what = "an Arrow stream" if stream else "a Parquet"
            raise TokenizeError(f"{path} is not {what} file pyarrow can read ({e})") from e

    def docs():
        for name, path in files:
            row = 0
            for texts in batches(path):
                for text in texts:
                    if text:
                        yield f"{name}:{row}", text
                    row += 1

    return docs


def _json(path: Path):
    """The JSON in ``path``, or None when there is none (absent, unreadable, not JSON)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _open_source(source, text_column: str, val_percent: float) -> tuple[Path, Docs, bool]:
    """(resolved path, its documents, whether it is one text file: held out by position)."""
    default = source is None
    if not default and str(source).strip() == "":
        raise TokenizeError("source is empty; give a text, Parquet or datasets path, or None")
    root = (data.default_corpus_path() if default else Path(source)).expanduser().resolve()
    if not root.exists():
        raise TokenizeError(f"source {root} does not exist")
    splits = _json(root / "dataset_dict.json")  # DatasetDict.save_to_disk: a folder per split
    if isinstance(splits, dict) and "splits" in splits:
        raise TokenizeError(
            f"{root} is a saved DatasetDict; give one split's directory: "
            + ", ".join(str(root / str(s)) for s in splits["splits"])
        )
    state = _json(root / "state.json")  # Dataset.save_to_disk: Arrow stream files and state.json
    if isinstance(state, dict) and isinstance(state.get("_data_files"), list):
        names = [d.get("filename") if isinstance(d, dict) else None for d in state["_data_files"]]
        if not all(isinstance(n, str) for n in names):
            raise TokenizeError(f"{root / 'state.json'}: _data_files lacks a filename")
        return root, _row_docs([(n, root / n) for n in names], text_column, True), False
    if root.suffix == ".parquet" and root.is_file():
        return root, _row_docs([(root.name, root)], text_column, False), False
    parquet = [
        (str(p.relative_to(root)), p)
        for p in sorted(root.rglob("*.parquet") if root.is_dir() else [])
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if parquet:  # other files (README.md, ...) are not documents
        return root, _row_docs(parquet, text_column, False), False
    return root, _text_docs(root, default, val_percent), root.is_file()


# --------------------------------------------------------------------------- the split


def _plan(root: Path, docs: Docs, val_percent: float, positional: bool) -> int | None:
    """None to hold out documents by ``data._is_val`` of their key; or, for one text file or
    when that would hold out under 1 KiB, a byte position in the documents joined by one-byte
    separators (as the byte corpus joins files) from which the text is held out."""
    n = total = held = 0
    for key, text in docs():
        size = len(text.encode())
        n, total = n + 1, total + size
        held += size if data._is_val(key, val_percent) else 0
    if total == 0:
        raise TokenizeError(f"source {root} has no text: every document is empty or binary")
    if not positional and held >= data.MIN_HELDOUT_BYTES:
        if held == total:
            raise TokenizeError(f"source {root}: every document is held out; lower val_percent")
        return None
    joined = total + n - 1
    cut = joined - int(joined * val_percent / 100)
    if joined - cut < data.MIN_HELDOUT_BYTES:
        raise TokenizeError(
            f"source {root} is too small: its validation split has {joined - cut} bytes "
            f"(need >= {data.MIN_HELDOUT_BYTES}); add text or raise val_percent (--val-percent)"
        )
    return cut


def _pieces(docs: Docs, val_percent: float, cut: int | None) -> Iterator[tuple[str, str]]:
    """(split, text) of every document in order; the document a positional ``cut`` falls in is
    split there (moved back to the start of a UTF-8 character) into two."""
    pos = 0
    for key, text in docs():
        if cut is None:
            yield ("val" if data._is_val(key, val_percent) else "train"), text
            continue
        raw = text.encode()
        start, pos = pos, pos + len(raw) + 1
        if cut >= start + len(raw) or cut <= start:
            yield ("train" if cut > start else "val"), text
        else:
            head = raw[: cut - start].decode("utf-8", errors="ignore")
            if head:
                yield "train", head
            yield "val", text[len(head) :]


def _chunks(text: str) -> Iterator[str]:
    """``text`` in pieces of about ``_CHUNK_CHARS`` characters, cut only at a line break between
    two non-space characters, where GPT-2's pre-tokenizer splits anyway (same ids as whole)."""
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        m = _LINE_CUT.search(text, start + _CHUNK_CHARS)
        if m is None:
            break
        yield text[start : m.end()]
        start = m.end()
    yield text[start:]


def _batches(pieces: Iterator[tuple[str, str]]) -> Iterator[list[tuple[str, bool, str]]]:
    """(split, whether it starts a document, text) of every chunk of ``pieces``, in lists of
    about ``_BATCH_CHARS`` characters."""
    batch, size = [], 0
    for split, text in pieces:
        for i, chunk in enumerate(_chunks(text)):
            batch.append((split, i == 0, chunk))
            size += len(chunk)
            if size >= _BATCH_CHARS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


# --------------------------------------------------------------------------- the tokenizer


def _train_bpe(pieces: Iterator[tuple[str, str]], vocab_size: int):
    """A byte-level BPE of at most ``vocab_size`` ids (``<|endoftext|>`` is id 0, the 256 byte
    symbols next), trained on the training pieces as they stream by."""
    tk = _need("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SEPARATOR_TOKEN],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    train = (p for p in pieces if p[0] == "train")
    tok.train_from_iterator(([t for _, _, t in b] for b in _batches(train)), trainer=trainer)
    return tok


def _load_tokenizer(path):
    """An existing ``tokenizer.json``: a byte-level BPE (GPT-2 style: ByteLevel pre-tokenizer
    without a prefix space) with an ``<|endoftext|>`` token."""
    tk = _need("tokenizers")
    path = Path(path).expanduser()
    if not path.is_file():
        raise TokenizeError(f"tokenizer {path} is not a file; give a tokenizer.json path")
    try:
        tok = tk.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception
        raise TokenizeError(f"tokenizer {path} is not a tokenizers JSON file ({e})") from e
    spec = json.loads(tok.to_str())
    model, pre = (spec.get("model") or {}).get("type"), json.dumps(spec.get("pre_tokenizer"))
    if model != "BPE" or '"ByteLevel"' not in pre:
        raise TokenizeError(
            f"tokenizer {path} is a {model} model without a ByteLevel pre-tokenizer: only a "
            "byte-level BPE (GPT-2 style) has whole bytes per token for bits per byte"
        )
    if '"add_prefix_space": true' in pre:
        raise TokenizeError(
            f"tokenizer {path} adds a space before each text (ByteLevel add_prefix_space): its "
            "tokens would not add up to the text's bytes"
        )
    if spec.get("normalizer") is not None:
        kind = (spec["normalizer"] or {}).get("type", "a normalizer")
        raise TokenizeError(
            f"tokenizer {path} has a normalizer ({kind}): it changes the text before encoding, "
            "so bits per byte would be measured on other text than the corpus's"
        )
    if tok.token_to_id(SEPARATOR_TOKEN) is None:
        raise TokenizeError(f"tokenizer {path} has no {SEPARATOR_TOKEN} token (the separator)")
    tok.no_truncation()  # documents are encoded whole
    tok.no_padding()
    return tok


def token_bytes(tok) -> np.ndarray:
    """UTF-8 bytes of text each id of a byte-level BPE stands for: ``[vocab_size]`` int32
    (special tokens and unused ids 0).  ``TokenizeError`` for a vocabulary entry not written in
    GPT-2's byte alphabet (a tokenizer that is not byte-level)."""
    table, added = byte_decoder(), tok.get_added_tokens_decoder()  # added: id -> AddedToken
    vocab = tok.get_vocab(with_added_tokens=True)
    out = np.zeros(max(vocab.values()) + 1, np.int32)
    for token, i in vocab.items():
        if i in added:
            out[i] = 0 if added[i].special else len(added[i].content.encode())
        elif all(c in table for c in token):
            out[i] = len(token)  # one character per byte
        else:
            raise TokenizeError(
                f"tokenizer token {token!r} (id {i}) is not in GPT-2's byte alphabet: the "
                "tokenizer is not byte-level"
            )
    return out


# --------------------------------------------------------------------------- writing


def _encode(tok, pieces, tmp: dict[str, Path], dtype: str, sep: int, log) -> dict:
    """Encode ``pieces`` in batches and append each split's ids to ``tmp[split]``, its
    documents joined by ``sep``.  Returns ``{"text_bytes", "documents", "tokens"}``, each
    ``{"train": int, "val": int}``."""
    stats = {k: {"train": 0, "val": 0} for k in ("text_bytes", "documents", "tokens")}
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # fast: no offsets
    little = np.dtype(dtype).newbyteorder("<")
    t0 = last = time.monotonic()
    with open(tmp["train"], "wb") as f_train, open(tmp["val"], "wb") as f_val:
        files = {"train": f_train, "val": f_val}
        for batch in _batches(pieces):
            encs = encode([text for _, _, text in batch], add_special_tokens=False)
            parts: dict[str, list] = {"train": [], "val": []}
            for (split, first, text), enc in zip(batch, encs):
                if first and stats["documents"][split]:
                    parts[split].append([sep])
                stats["documents"][split] += first
                stats["text_bytes"][split] += len(text.encode())
                parts[split].append(enc.ids)
            for split, ids in parts.items():
                arr = np.concatenate(ids).astype(little) if ids else np.zeros(0, little)
                files[split].write(arr.tobytes())
                stats["tokens"][split] += len(arr)
            if log and time.monotonic() - last > _LOG_EVERY_S:
                last = time.monotonic()
                _progress(log, stats, last - t0)
    if log:
        _progress(log, stats, time.monotonic() - t0)
    return stats


def _progress(log, stats: dict, seconds: float) -> None:
    mb = sum(stats["text_bytes"].values()) / 1e6
    log(
        f"tokenize: {sum(stats['documents'].values()):,} documents, "
        f"{sum(stats['tokens'].values()):,} tokens, {mb:,.1f} MB of text, "
        f"{mb / max(seconds, 1e-9):.2f} MB/s"
    )


def _check_bytes(path: Path, dtype: str, tb: np.ndarray, expect: int, split: str) -> None:
    """The bytes of text the ids written to ``path`` stand for must add up to ``expect``."""
    ids = np.memmap(path, np.dtype(dtype).newbyteorder("<"), "r") if path.stat().st_size else []
    got = sum(int(tb[ids[i : i + (1 << 24)]].sum()) for i in range(0, len(ids), 1 << 24))
    if got != expect:
        raise TokenizeError(
            f"the {split} ids stand for {got} bytes of text but the text has {expect}: the "
            "tokenizer does not map text to bytes one to one (a normalizer?)"
        )


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def tokenize(
    source: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 8192,
    tokenizer: str | os.PathLike | None = None,
    val_percent: float = 2.0,
    text_column: str = "text",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Tokenize ``source`` into the token directory ``out_dir``; returns its ``tokens.json``.

    source: None, the default corpus (the standard library's ``.py`` files); a text file or
    directory (the byte corpus's documents and held-out files: ``data._is_val`` of the relative
    path); a ``.parquet`` file or a directory holding ``.parquet`` files (its other files are
    ignored); or a ``Dataset.save_to_disk`` directory (``state.json`` + Arrow stream files).
    Each non-empty row of ``text_column`` is a document, held out by
    ``data._is_val("{file}:{row}")``.  A single text file, or a source whose split by key holds
    out under 1 KiB, holds out its last ``val_percent`` % of bytes, like the byte corpus (cut
    at the start of a character).  The held-out split needs >= 1,024 bytes.
    vocab_size: the most ids the BPE trained on the training split may have (a small corpus
    gives fewer), in [257, 2^31].  tokenizer: a ``tokenizer.json`` to load instead (a
    byte-level BPE with ``<|endoftext|>``; vocab_size is then unused).  val_percent: share
    held out, in (0, 100).  log: called with progress lines (documents, tokens, MB/s).

    Writes ``train.bin`` / ``val.bin`` (ids, uint16 up to 65,536 ids, else uint32),
    ``token_bytes.npy`` (``[vocab]`` int32), ``tokenizer.json`` and last ``tokens.json``, each
    through a temporary file; checks that each split's ids stand for its text's bytes.
    """
    _need("tokenizers")
    if not 0 < val_percent < 100:
        raise TokenizeError(f"val_percent must be in (0, 100), got {val_percent!r}")
    if tokenizer is None and (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, int)
        or not 257 <= vocab_size <= 2**31
    ):
        raise TokenizeError(
            f"vocab_size must be an integer in [257, 2^31] (256 bytes and {SEPARATOR_TOKEN}), "
            f"got {vocab_size!r}"
        )
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise TokenizeError(f"out_dir {out} is a file, not a directory")
    try:
        root, docs, positional = _open_source(source, text_column, val_percent)
        if root.is_dir() and root in (where := out.resolve(), *where.parents):
            raise TokenizeError(f"out_dir {out} is inside the source {root}; write it elsewhere")
        tok = _load_tokenizer(tokenizer) if tokenizer is not None else None
        cut = _plan(root, docs, val_percent, positional)
        if tok is None:
            if log:
                log(f"tokenize: training a byte-level BPE of {vocab_size:,} ids on {root}")
            tok = _train_bpe(_pieces(docs, val_percent, cut), vocab_size)
        tok.encode_special_tokens = True  # "<|endoftext|>" in a text is text, not the separator
        tb = token_bytes(tok)
        vocab, sep = len(tb), tok.token_to_id(SEPARATOR_TOKEN)
        dtype = "uint16" if vocab <= 1 << 16 else "uint32"
        out.mkdir(parents=True, exist_ok=True)
        (out / data.TOKENS_META).unlink(missing_ok=True)  # incomplete until written again
        tmp = {s: out / f".{s}.{os.getpid()}.tmp" for s in ("train", "val")}
        try:
            stats = _encode(tok, _pieces(docs, val_percent, cut), tmp, dtype, sep, log)
            for split, path in tmp.items():
                _check_bytes(path, dtype, tb, stats["text_bytes"][split], split)
                os.replace(path, out / f"{split}.bin")
        finally:
            for path in tmp.values():
                path.unlink(missing_ok=True)
        _write_atomic(out / "token_bytes.npy", lambda p: np.save(p, tb))
        _write_atomic(out / "tokenizer.json", lambda p: tok.save(str(p)))
        digest = hashlib.blake2b((out / "tokenizer.json").read_bytes()).hexdigest()[:12]
        meta = {
            "format": "jscale-tokens",
            "version": 1,
            "vocab_size": vocab,
            "dtype": dtype,
            "tokenizer": f"bpe-{vocab}-{digest}",
            "separator": sep,
            "token_bytes": "token_bytes.npy",
            "source": str(root),
            **stats,
        }
        _write_atomic(out / data.TOKENS_META, lambda p: p.write_text(json.dumps(meta, indent=1)))
    except data.CorpusError as e:  # an unreadable file or directory of the source
        raise TokenizeError(str(e)) from e
    except OSError as e:
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise  # a full disk: the command line says so
        raise TokenizeError(f"cannot write the token files in {out} ({e.strerror or e})") from e
    return meta
