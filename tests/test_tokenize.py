"""jscale.tokenize: text, Parquet and saved-``datasets`` sources to token files.

References are independent of the module: documents and their held-out split are listed here
by hand (CRC32 of the relative path, as docs/data.md defines it), text bytes are counted with
``str.encode``, and ids are checked by decoding them with the saved tokenizer and against
``Tokenizer.encode`` of each document.
"""

import json
import sys
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from jscale import data, tokenize
from jscale.tokenize import TokenizeError

VAL_PERCENT = 30.0
SEP = "<|endoftext|>"


def _is_val(rel: str) -> bool:  # docs/data.md's rule, written out
    return zlib.crc32(rel.encode()) % 10_000 < VAL_PERCENT * 100


def _texts() -> dict[str, str]:
    """Relative path -> text of the tiny corpus: code, non-ASCII prose, a literal separator."""
    out = {}
    for i in range(10):
        out[f"doc{i}.py"] = "".join(
            f"def f_{i}_{j}(x, y={j}):\n    return x * {i} + y  # line {j}\n" for j in range(9)
        )
    out["sub/unicode.txt"] = "Grüße aus Köln. 日本語のテキスト 😀 naïve café — ½ ∑\n" * 12
    out["sub/special.txt"] = f"a literal {SEP} inside a document is text, not a separator\n" * 6
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    for rel, text in _texts().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "blob.bin").write_bytes(b"\x00\x01binary\x00" * 50)  # NUL bytes: skipped
    (root / ".hidden").write_text("hidden files are skipped\n")
    docs = {"train": [], "val": []}
    for rel in sorted(_texts()):  # the byte corpus's order: sorted relative paths
        docs["val" if _is_val(rel) else "train"].append(_texts()[rel])
    assert len(docs["val"]) >= 2 and sum(len(t.encode()) for t in docs["val"]) >= 1024
    out = tmp_path_factory.mktemp("tok") / "bpe"
    lines = []
    meta = tokenize.tokenize(root, out, vocab_size=300, val_percent=VAL_PERCENT, log=lines.append)
    return root, out, meta, docs, lines


def _ids(out, meta, split):
    ids = np.fromfile(out / f"{split}.bin", dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
    assert len(ids) == meta["tokens"][split]
    return ids


def _split_docs(ids, sep) -> list[list[int]]:
    """The documents of a split: ids between separators."""
    out, cur = [], []
    for i in np.asarray(ids).tolist():
        if i == sep:
            out.append(cur)
            cur = []
        else:
            cur.append(i)
    return out + [cur]


def _encoder(path):
    tok = Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True
    return tok


def test_text_directory(corpus):
    root, out, meta, docs, lines = corpus
    assert json.loads((out / "tokens.json").read_text()) == meta
    assert meta["format"] == "jscale-tokens" and meta["version"] == 1
    assert meta["dtype"] == "uint16" and meta["vocab_size"] <= 300
    assert meta["separator"] == 0 and meta["source"] == str(root.resolve())
    assert meta["tokenizer"].startswith(f"bpe-{meta['vocab_size']}-")
    tb = np.load(out / "token_bytes.npy")
    assert tb.dtype == np.int32 and tb.shape == (meta["vocab_size"],)
    assert tb[0] == 0 and (tb[1:257] == 1).all()  # the separator, then the 256 byte symbols
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.token_to_id(SEP) == 0
    for split in ("train", "val"):
        ids = _ids(out, meta, split)
        assert (out / f"{split}.bin").stat().st_size == 2 * len(ids)
        text_bytes = sum(len(t.encode("utf-8")) for t in docs[split])
        assert meta["text_bytes"][split] == text_bytes == int(tb[ids].sum())
        assert meta["documents"][split] == len(docs[split])
        assert [tok.decode(d) for d in _split_docs(ids, 0)] == docs[split]
    assert any("MB/s" in line for line in lines)


def test_held_out_files_are_the_byte_corpus(corpus):
    root, out, meta, docs, _ = corpus
    byte_corpus = data.load_corpus(root, val_percent=VAL_PERCENT)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for split in ("train", "val"):
        text = b"\x00".join(tok.decode(d).encode() for d in _split_docs(_ids(out, meta, split), 0))
        assert text == np.asarray(getattr(byte_corpus, split)).tobytes()


def test_load_corpus_reads_the_directory(corpus):
    _, out, meta, _, _ = corpus
    c = data.load_corpus(out)
    assert (c.vocab_size, c.tokenizer, c.separator) == (
        meta["vocab_size"],
        meta["tokenizer"],
        meta["separator"],
    )
    np.testing.assert_array_equal(c.token_bytes, np.load(out / "token_bytes.npy"))
    np.testing.assert_array_equal(c.train, _ids(out, meta, "train"))
    np.testing.assert_array_equal(c.val, _ids(out, meta, "val"))
    assert (c.n_files_train, c.n_files_val) == (
        meta["documents"]["train"],
        meta["documents"]["val"],
    )


def test_literal_separator_is_text(corpus):
    _, out, meta, docs, _ = corpus
    tok = _encoder(out / "tokenizer.json")
    special = _texts()["sub/special.txt"]
    split = "val" if special in docs["val"] else "train"
    found = [d for d in _split_docs(_ids(out, meta, split), 0) if tok.decode(d) == special]
    assert found == [tok.encode(special, add_special_tokens=False).ids]
    assert 0 not in found[0]


def test_loaded_tokenizer_reproduces_ids(corpus, tmp_path):
    root, out, meta, _, _ = corpus
    again = tokenize.tokenize(
        root, tmp_path / "again", tokenizer=out / "tokenizer.json", val_percent=VAL_PERCENT
    )
    assert again == meta
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.enable_truncation(8)  # saved with the tokenizer: must not cut documents
    tok.enable_padding(length=4096)
    tok.save(str(tmp_path / "truncating.json"))
    t = tokenize.tokenize(
        root, tmp_path / "t", tokenizer=tmp_path / "truncating.json", val_percent=VAL_PERCENT
    )
    assert t["tokens"] == meta["tokens"]
    for split in ("train", "val"):
        assert (tmp_path / "again" / f"{split}.bin").read_bytes() == (
            out / f"{split}.bin"
        ).read_bytes()


def test_a_loaded_tokenizer_with_a_normalizer_is_refused(corpus, tmp_path):
    """Lower-casing keeps the length, so the byte totals would agree: refused up front."""
    from tokenizers import normalizers

    root, out, _, _, _ = corpus
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.normalizer = normalizers.Lowercase()
    tok.save(str(tmp_path / "lower.json"))
    with pytest.raises(tokenize.TokenizeError, match=r"has a normalizer \(Lowercase\)"):
        tokenize.tokenize(root, tmp_path / "t", tokenizer=tmp_path / "lower.json")
    assert not (tmp_path / "t" / "tokens.json").exists()


def test_training_is_deterministic(corpus, tmp_path):
    root, _, meta, _, _ = corpus
    again = tokenize.tokenize(root, tmp_path / "again", vocab_size=300, val_percent=VAL_PERCENT)
    assert again["tokenizer"] == meta["tokenizer"]


def test_long_documents_are_encoded_in_pieces_with_the_same_ids(corpus, tmp_path, monkeypatch):
    root, out, meta, _, _ = corpus
    monkeypatch.setattr(tokenize, "_CHUNK_CHARS", 40)  # cut every document at line breaks
    monkeypatch.setattr(tokenize, "_BATCH_CHARS", 200)  # and encode many small batches
    tokenize.tokenize(root, tmp_path / "t", tokenizer=out / "tokenizer.json", val_percent=30.0)
    for split in ("train", "val"):
        assert (tmp_path / "t" / f"{split}.bin").read_bytes() == (out / f"{split}.bin").read_bytes()


def test_chunks_are_cut_where_the_pre_tokenizer_splits(monkeypatch):
    monkeypatch.setattr(tokenize, "_CHUNK_CHARS", 7)
    text = "".join(_texts().values()) + "x  \n\n  y\n\tz \nw\n\u3000v\nend  "
    chunks = list(tokenize._chunks(text))
    assert "".join(chunks) == text and len(chunks) > 100
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    whole = [p for p, _ in pre.pre_tokenize_str(text)]
    assert [p for c in chunks for p, _ in pre.pre_tokenize_str(c)] == whole


def _rows() -> list[str]:
    return [_texts()[k] for k in sorted(_texts())] + ["", None, "short row\n"] * 2


def _check_rows(out, meta, keys_texts, tokenizer_path):
    """Every non-empty row is one document, in order, held out by CRC32 of its key, with the
    ids ``Tokenizer.encode`` gives it."""
    tok = _encoder(tokenizer_path)
    for split in ("train", "val"):
        want = [t for k, t in keys_texts if t and _is_val(k) == (split == "val")]
        got = _split_docs(_ids(out, meta, split), meta["separator"])
        assert got == [tok.encode(t, add_special_tokens=False).ids for t in want]
        assert meta["text_bytes"][split] == sum(len(t.encode()) for t in want)


def test_parquet_file_and_directory(corpus, tmp_path):
    _, out, _, _, _ = corpus
    rows = _rows()
    table = pa.table({"id": list(range(len(rows))), "text": rows})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=4)  # several batches
    m = tokenize.tokenize(
        tmp_path / "one.parquet",
        tmp_path / "p1",
        tokenizer=out / "tokenizer.json",
        val_percent=VAL_PERCENT,
    )
    _check_rows(
        tmp_path / "p1",
        m,
        [(f"one.parquet:{i}", t) for i, t in enumerate(rows)],
        out / "tokenizer.json",
    )
    d = tmp_path / "pdir"
    (d / "data").mkdir(parents=True)
    (d / "README.md").write_text("not a document\n")
    pq.write_table(table.slice(0, 7), d / "data" / "a.parquet")
    pq.write_table(table.slice(7), d / "data" / "b.parquet")
    m = tokenize.tokenize(
        d, tmp_path / "p2", tokenizer=out / "tokenizer.json", val_percent=VAL_PERCENT
    )
    keys = [(f"data/a.parquet:{i}", t) for i, t in enumerate(rows[:7])]
    keys += [(f"data/b.parquet:{i}", t) for i, t in enumerate(rows[7:])]
    _check_rows(tmp_path / "p2", m, keys, out / "tokenizer.json")


def _save_to_disk(d, rows, shards=2):
    """What ``datasets.Dataset.save_to_disk`` writes (checked against datasets 5.2.0):
    ``data-0000i-of-0000n.arrow`` Arrow IPC *stream* files, ``state.json`` listing them under
    ``_data_files`` and ``dataset_info.json``."""
    d.mkdir()
    table = pa.table({"text": pa.array(rows, pa.large_string()), "n": list(range(len(rows)))})
    names, step = [], -(-len(rows) // shards)
    for i in range(shards):
        names.append(f"data-{i:05d}-of-{shards:05d}.arrow")
        with pa.ipc.new_stream(d / names[-1], table.schema) as w:
            for batch in table.slice(i * step, step).to_batches(max_chunksize=3):
                w.write_batch(batch)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_split": None}
    (d / "state.json").write_text(json.dumps(state))
    (d / "dataset_info.json").write_text("{}")
    return [(f"{names[i // step]}:{i % step}", t) for i, t in enumerate(rows)]


def test_saved_dataset(corpus, tmp_path):
    _, out, _, _, _ = corpus
    keys = _save_to_disk(tmp_path / "ds", _rows())
    m = tokenize.tokenize(
        tmp_path / "ds", tmp_path / "t", tokenizer=out / "tokenizer.json", val_percent=VAL_PERCENT
    )
    _check_rows(tmp_path / "t", m, keys, out / "tokenizer.json")
    assert m["documents"]["train"] + m["documents"]["val"] == sum(1 for r in _rows() if r)


def test_single_file_holds_out_its_tail(tmp_path):
    text = "Ünïcödé head. " + "".join(f"line {i} of plain ascii text\n" for i in range(300))
    (tmp_path / "one.txt").write_text(text)
    m = tokenize.tokenize(tmp_path / "one.txt", tmp_path / "t", vocab_size=280, val_percent=20)
    tok = Tokenizer.from_file(str(tmp_path / "t" / "tokenizer.json"))
    parts = [tok.decode(_ids(tmp_path / "t", m, s).tolist()) for s in ("train", "val")]
    assert parts[0] + parts[1] == text and m["documents"] == {"train": 1, "val": 1}
    byte_corpus = data.load_corpus(tmp_path / "one.txt", val_percent=20)
    assert parts[1].encode() == np.asarray(byte_corpus.val).tobytes()


def test_directory_with_too_little_held_out_cuts_like_the_byte_corpus(tmp_path):
    big = next(f"z{i}.txt" for i in range(100) if not _is_val(f"z{i}.txt"))
    small = next(f"a{i}.txt" for i in range(100) if _is_val(f"a{i}.txt"))  # sorts first
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / big).write_text("".join(f"row {i}: some words here\n" for i in range(400)))
    (tmp_path / "d" / small).write_text("a small held-out file, under 1 KiB\n")
    m = tokenize.tokenize(tmp_path / "d", tmp_path / "t", vocab_size=280, val_percent=VAL_PERCENT)
    tok = Tokenizer.from_file(str(tmp_path / "t" / "tokenizer.json"))
    byte_corpus = data.load_corpus(tmp_path / "d", val_percent=VAL_PERCENT)
    for split in ("train", "val"):
        docs = _split_docs(_ids(tmp_path / "t", m, split), 0)
        text = b"\x00".join(tok.decode(d).encode() for d in docs)
        assert text == np.asarray(getattr(byte_corpus, split)).tobytes()


def test_a_cut_inside_a_character_moves_to_its_start(tmp_path):
    (tmp_path / "e.txt").write_text("é" * 3000)  # 6,000 bytes; 20.05 % = 1,203: an odd cut
    m = tokenize.tokenize(tmp_path / "e.txt", tmp_path / "t", vocab_size=260, val_percent=20.05)
    tok = Tokenizer.from_file(str(tmp_path / "t" / "tokenizer.json"))
    parts = [tok.decode(_ids(tmp_path / "t", m, s).tolist()) for s in ("train", "val")]
    assert parts == ["é" * 2398, "é" * 602]
    assert m["text_bytes"] == {"train": 4796, "val": 1204}


def test_large_vocabulary_is_uint32(tmp_path):
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    for a in sorted(alphabet):  # 256 + 65,536 pair entries (never merged: no merges)
        for b in sorted(alphabet):
            vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens([SEP])
    tok.save(str(tmp_path / "big.json"))
    (tmp_path / "one.txt").write_text("some text é\n" * 500)
    m = tokenize.tokenize(
        tmp_path / "one.txt", tmp_path / "t", tokenizer=tmp_path / "big.json", val_percent=20
    )
    assert m["dtype"] == "uint32" and m["vocab_size"] == len(vocab) + 1 > 65_536
    assert m["separator"] == len(vocab)
    assert (tmp_path / "t" / "train.bin").stat().st_size == 4 * m["tokens"]["train"]
    c = data.load_corpus(tmp_path / "t")
    assert int(c.token_bytes[np.asarray(c.val)].sum()) == m["text_bytes"]["val"]


def test_byte_decoder_inverts_the_byte_level_alphabet():
    table = tokenize.byte_decoder()
    assert sorted(table.values()) == list(range(256))
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    text = "".join(map(chr, range(1, 0x800))) + "日本語のテキスト😀\U0010fffd"
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
    assert bytes(table[c] for p, _ in pieces for c in p) == text.encode()


def _wordpiece(path):
    tok = Tokenizer(models.WordPiece({"[UNK]": 0, SEP: 1, "a": 2, "##b": 3}, unk_token="[UNK]"))
    tok.save(str(path))
    return path


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "does not exist"),
        ("binary", "has no text"),
        ("small", "too small"),
        ("column", "no column 'body'; its columns: id, text"),
        ("vocab_low", "vocab_size must be an integer in [257, 2^31]"),
        ("vocab_high", "vocab_size must be an integer in [257, 2^31]"),
        ("val_percent", "val_percent must be in (0, 100)"),
        ("out_file", "is a file, not a directory"),
        ("no_tokenizer_file", "is not a file; give a tokenizer.json path"),
        ("wordpiece", "is a WordPiece model without a ByteLevel pre-tokenizer"),
        ("dataset_dict", "is a saved DatasetDict; give one split's directory"),
        ("extra", "pip install 'jscale[tokenize]' (tokenizers missing)"),
        ("extra_pyarrow", "pip install 'jscale[tokenize]' (pyarrow missing)"),
        ("out_inside", "is inside the source"),
        ("bad_parquet", "is not a Parquet file pyarrow can read"),
        ("not_bpe_level", "adds a space before each text"),
    ],
)
def test_bad_input_is_one_line_naming_it(case, expect, tmp_path, monkeypatch):
    src, out, kw = tmp_path / "src", tmp_path / "out", {"vocab_size": 300}
    src.mkdir()
    (src / "a.txt").write_text("x" * 5000)
    name = src
    if case == "missing":
        src = name = tmp_path / "nowhere"
    elif case == "binary":
        (src / "a.txt").write_bytes(b"\x00" * 100)
    elif case == "small":
        (src / "a.txt").write_text("tiny\n")
    elif case == "column":
        src = name = tmp_path / "t.parquet"
        pq.write_table(pa.table({"id": [1], "text": ["x"]}), src)
        kw["text_column"] = "body"
    elif case.startswith("vocab"):
        kw["vocab_size"] = 256 if case == "vocab_low" else 2**31 + 1
        name = kw["vocab_size"]
    elif case == "val_percent":
        kw["val_percent"] = name = 100.0
    elif case == "out_file":
        out.write_text("")
        name = out
    elif case == "no_tokenizer_file":
        kw["tokenizer"] = name = tmp_path / "gpt2"
    elif case == "wordpiece":
        kw["tokenizer"] = name = _wordpiece(tmp_path / "wp.json")
    elif case == "dataset_dict":
        (src / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
        name = src / "train"
    elif case == "extra":
        monkeypatch.setitem(sys.modules, "tokenizers", None)  # import raises ImportError
        name = "tokenizers"
    elif case == "extra_pyarrow":
        src = tmp_path / "t.parquet"
        pq.write_table(pa.table({"text": ["x"]}), src)
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        name = "pyarrow"
    elif case == "out_inside":
        out = name = src / "tok"
    elif case == "bad_parquet":
        src = name = tmp_path / "t.parquet"
        src.write_text("not parquet")
    elif case == "not_bpe_level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.add_special_tokens([SEP])
        tok.save(str(tmp_path / "roberta.json"))
        kw["tokenizer"] = name = tmp_path / "roberta.json"
    with pytest.raises(TokenizeError) as e:
        tokenize.tokenize(src, out, **kw)
    msg = str(e.value)
    assert expect in msg and str(name) in msg and "\n" not in msg
    assert not (out / "tokens.json").exists()
