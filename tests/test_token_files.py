"""Pre-tokenized corpora (issue 20): token files are read memory-mapped with their vocabulary,
bad files get a one-line error naming them, bits per byte divides by the bytes of text the
windows predict, and a sweep trains, evaluates and records on a token corpus."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from jscale import data, evaluate, sweep, train
from jscale.config import ConfigError, TrainConfig, config_for_params
from jscale.sweep_config import parse_sweep

SEP = 0


def _documents(n_bytes=400_000):
    """Real ASCII text: standard-library modules, whole files, about ``n_bytes`` in all."""
    root = data.default_corpus_path()
    docs, total = [], 0
    for name in (
        "textwrap.py",
        "string.py",
        "shlex.py",
        "fnmatch.py",
        "glob.py",
        "bisect.py",
        "heapq.py",
        "calendar.py",
        "difflib.py",
        "argparse.py",
        "pprint.py",
    ):
        text = (root / name).read_bytes()
        if not text.isascii():
            continue
        docs.append(text)
        total += len(text)
        if total > n_bytes:
            break
    return docs


class PairTokenizer:
    """A tiny byte-pair tokenizer (one merge round of the most frequent byte pairs): id 0 is
    the separator (0 bytes), ids 1..255 the bytes themselves, ids 256.. the pairs.  Written
    independently of jscale: its ``decode`` is the hand count's reference."""

    def __init__(self, docs, n_pairs=200):
        counts = {}
        for d in docs:
            for a, b in zip(d, d[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        top = sorted(counts, key=counts.get, reverse=True)[:n_pairs]
        self.pairs = {p: 256 + i for i, p in enumerate(top)}
        self.table = {i: bytes([i]) for i in range(1, 256)} | {
            i: bytes(p) for p, i in self.pairs.items()
        }
        self.table[SEP] = b""
        self.vocab_size = 256 + len(top)

    def encode(self, doc: bytes) -> list[int]:
        out, i = [], 0
        while i < len(doc):
            pid = self.pairs.get(tuple(doc[i : i + 2])) if i + 1 < len(doc) else None
            out.append(pid if pid is not None else doc[i])
            i += 2 if pid is not None else 1
        return out

    def decode(self, ids) -> bytes:
        return b"".join(self.table[int(i)] for i in ids)


def _write_tokens(d, tok, train_docs, val_docs, *, dtype="uint16", suffix=".bin", meta=None):
    d.mkdir(parents=True, exist_ok=True)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ids = []
        for k, doc in enumerate(docs):
            ids += ([SEP] if k else []) + tok.encode(doc)
        arr = np.asarray(ids, dtype=dtype)
        if suffix == ".bin":
            arr.tofile(d / f"{split}.bin")
        else:
            np.save(d / f"{split}.npy", arr)
    tb = np.array([len(tok.table.get(i, b"")) for i in range(tok.vocab_size)], np.int32)
    np.save(d / "token_bytes.npy", tb)
    m = {
        "format": "jscale-tokens",
        "version": 1,
        "vocab_size": tok.vocab_size,
        "dtype": dtype,
        "tokenizer": "pairs-test",
        "separator": SEP,
        "token_bytes": "token_bytes.npy",
        "documents": {"train": len(train_docs), "val": len(val_docs)},
    }
    (d / "tokens.json").write_text(json.dumps({**m, **(meta or {})}))
    return d


@pytest.fixture(scope="module")
def texts():
    docs = _documents()
    return docs[:-3], docs[-3:]  # held out: the last three files


@pytest.fixture(scope="module")
def tok(texts):
    return PairTokenizer(texts[0])


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory, texts, tok):
    return _write_tokens(tmp_path_factory.mktemp("tok") / "pairs", tok, *texts)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, texts):
    """The same documents as text files, tokenized by a real byte-level BPE (jscale tokenize)."""
    from jscale import tokenize

    root = tmp_path_factory.mktemp("bpe")
    src = root / "text"
    src.mkdir()
    for i, doc in enumerate(texts[0] + texts[1]):
        (src / f"doc{i:02d}.py").write_bytes(doc)
    tokenize.tokenize(src, root / "tokens", vocab_size=600, val_percent=40)  # 4 held-out files
    return root / "tokens"


def _hand_decoder(kind, corpus_dir, tok):
    """A decoder independent of ``token_bytes``: the test tokenizer's own table, or Hugging
    Face's ``Tokenizer.decode`` (the documents are ASCII, so every window decodes whole)."""
    if kind == "pairs":
        return tok.decode
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(corpus_dir / "tokenizer.json"))
    return lambda ids: hf.decode([int(i) for i in ids], skip_special_tokens=True).encode()


def test_token_directory_is_memory_mapped_with_its_vocabulary(token_dir, texts, tok):
    c = data.load_corpus(token_dir)
    assert isinstance(c.train, np.memmap) and c.train.dtype == np.uint16
    assert (c.vocab_size, c.tokenizer, c.separator) == (tok.vocab_size, "pairs-test", SEP)
    # the ids decode back to the documents, joined by the separator
    assert tok.decode(c.val) == b"".join(texts[1])
    assert int((np.asarray(c.val) == SEP).sum()) == len(texts[1]) - 1
    assert (c.n_files_train, c.n_files_val) == (len(texts[0]), len(texts[1]))
    # the digest is the same on a reload and changes with the content
    assert data.load_corpus(token_dir).digest == c.digest
    assert sweep.corpus_digest(c) == c.digest
    # the held-out halves cut at a separator, so no document is split between them
    assert c.select[-1] != SEP and c.test[0] == SEP


def test_single_npy_token_file_holds_out_its_tail(tmp_path, tok, texts):
    d = _write_tokens(tmp_path / "one", tok, texts[0], texts[1], suffix=".npy", dtype="uint32")
    whole = np.load(d / "train.npy")
    c = data.load_corpus(d / "train.npy", val_percent=10)
    cut = len(whole) - int(len(whole) * 0.10)
    np.testing.assert_array_equal(c.train, whole[:cut])
    np.testing.assert_array_equal(c.val, whole[cut:])
    assert c.train.dtype == np.uint32


def test_window_bytes_match_a_hand_count_for_bytes_and_pairs(corpus, token_dir, tok):
    """Bytes of text each window predicts: for a byte corpus the non-separator targets, for the
    pair tokenizer the length of the decoded targets (its own table, not token_bytes)."""
    seq = 64
    b = data.eval_batches(corpus.test, seq, 50 * seq)
    np.testing.assert_array_equal(
        data.window_bytes(b, corpus.token_bytes), np.count_nonzero(b[:, 1:], axis=1)
    )
    c = data.load_corpus(token_dir)
    w = data.eval_batches(c.test, seq, 50 * seq)
    hand = [len(tok.decode(row[1:])) for row in w]
    np.testing.assert_array_equal(data.window_bytes(w, c.token_bytes), hand)


def test_bits_per_byte_against_float64_and_a_jackknife():
    rng = np.random.default_rng(3)
    n, T = 4000, 16
    bytes_N = rng.integers(T, 4 * T, size=n)  # 1-4 bytes per token
    losses_N = 0.02 * bytes_N + rng.normal(0, 0.3, size=n)  # nats/token, correlated with bytes
    out = evaluate.bits_per_byte(losses_N, T, bytes_N)
    nats = losses_N.astype(np.float64) * T
    assert out["eval_bits_per_byte"] == pytest.approx(nats.sum() / bytes_N.sum() / math.log(2))
    assert out["eval_text_bytes"] == bytes_N.sum()
    # the delta-method SE agrees with the jackknife SE of the ratio (independent estimator)
    loo = (nats.sum() - nats) / (bytes_N.sum() - bytes_N) / math.log(2)
    jack = math.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum())
    assert out["eval_bits_per_byte_se"] == pytest.approx(jack, rel=0.03)
    # one byte per token: bits per byte is nats / ln 2 with the loss's SE / ln 2
    one = evaluate.bits_per_byte(losses_N, T, np.full(n, T))
    mean, se = evaluate.mean_and_se(losses_N)
    assert one["eval_bits_per_byte"] == pytest.approx(mean / math.log(2))
    assert one["eval_bits_per_byte_se"] == pytest.approx(se / math.log(2))


def _bad(tmp_path, tok, texts, **meta):
    return _write_tokens(tmp_path / "bad", tok, texts[0][:2], texts[1], meta=meta)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "tokens.json").unlink(), r"no tokens\.json"),
        (lambda d: (d / "val.bin").unlink(), r"val\.bin, val\.npy; found 0"),
        (lambda d: np.save(d / "val.npy", np.zeros(8, np.float32)), r"found 2"),
        (
            lambda d: ((d / "val.bin").unlink(), np.save(d / "val.npy", np.zeros(9, np.float32))),
            r"val\.npy holds float32 \[9\]; token files must be 1-D uint8, uint16, uint32",
        ),
        (
            lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-1]),
            r"train\.bin has \d+ bytes, not a multiple of 2 \(uint16\)",
        ),
        (
            lambda d: np.full(10, 60_000, np.uint16).tofile(d / "val.bin"),
            r"val\.bin holds id 60000, beyond the vocabulary \(vocab_size \d+",
        ),
        (
            lambda d: np.save(d / "token_bytes.npy", np.ones(3, np.int32)),
            r"token_bytes\.npy must be \[\d+\] non-negative integers",
        ),
        (lambda d: (d / "tokens.json").write_text("{"), r"tokens\.json is not readable JSON"),
    ],
)
def test_bad_token_files_get_one_line_errors_naming_the_file(
    tmp_path, tok, texts, breakage, message
):
    d = _bad(tmp_path, tok, texts)
    breakage(d)
    with pytest.raises(data.CorpusError, match=message) as e:
        data.load_corpus(d)
    assert "\n" not in str(e.value) and str(d) in str(e.value)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"vocab_size": 1}, r"vocab_size must be an integer in \[2, 2\^31\]"),
        ({"vocab_size": 70_000}, r"dtype uint16 cannot hold ids of a 70000-token vocabulary"),
        ({"dtype": "int64"}, r"dtype must be one of uint8, uint16, uint32"),
        ({"tokenizer": ""}, r"tokenizer must be a non-empty name"),
        ({"separator": 10**6}, r"separator must be null or an id"),
        ({"token_bytes": "nope.npy"}, r"token_bytes must be null or a file"),
    ],
)
def test_bad_token_metadata_names_the_field(tmp_path, tok, texts, meta, message):
    d = _bad(tmp_path, tok, texts, **meta)
    with pytest.raises(data.CorpusError, match=message) as e:
        data.load_corpus(d)
    assert "tokens.json" in str(e.value)


def test_too_short_for_one_sequence_names_the_file(tmp_path, tok):
    d = _write_tokens(tmp_path / "short", tok, [b"ab"], [b"cd" * 10])
    c = data.load_corpus(d)
    cfg = config_for_params(2e3, max_seq_len=64, vocab_size=c.vocab_size)
    with pytest.raises(data.CorpusError, match=r"train\.bin holds 2 tokens of the train split"):
        train.check_train_inputs(cfg, TrainConfig(steps=1, seq_len=64), c)
    small = config_for_params(2e3, max_seq_len=64)  # a byte model on a larger vocabulary
    with pytest.raises(ConfigError, match=r"vocab_size \(256\) is smaller than the corpus's"):
        train.check_train_inputs(small, TrainConfig(steps=1, seq_len=64), c)


SWEEP = """
name = "tokens"
seeds = [0]
precisions = ["fp32", "int8"]
[sizes]
params_non_embedding = [3e3, 1.2e4]
[tokens]
fixed = 16384
max_epochs = {epochs}
[train]
batch_size = 8
seq_len = 64
eval_tokens = 4096
steps_per_call = 8
[latency]
enabled = false
[corpus]
path = "{path}"
"""


@pytest.mark.slow
def test_sweep_on_token_files_records_tokenizer_and_bits_per_byte(tmp_path, bpe_dir):
    """A sweep on a real byte-level BPE corpus (the pair-tokenizer corpus checks the same
    byte counts without training, above)."""
    where = bpe_dir
    c = data.load_corpus(where)
    s = parse_sweep(SWEEP.format(path=where, epochs=4.0), out_dir=str(tmp_path / "out"))
    assert {p.model.vocab_size for p in s.train_points} == {c.vocab_size}
    r = sweep.run_sweep(s, progress=False, echo=False)
    assert r.written == 4 and not r.failed
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(df.tokenizer) == {c.tokenizer} and set(df.vocab_size) == {c.vocab_size}
    decode = _hand_decoder("bpe", where, None)
    w = data.eval_batches(c.test, 64, 4096)
    hand_bytes = sum(len(decode(row[1:])) for row in w)
    assert set(df.eval_text_bytes) == {hand_bytes}
    # bits per byte = nats per token x tokens / bytes / ln 2, on one eval set for all models
    np.testing.assert_allclose(
        df.eval_bits_per_byte,
        df.eval_loss_nats * df.eval_tokens / hand_bytes / math.log(2),
        rtol=1e-9,
    )
    assert (df.eval_bits_per_byte < df.eval_loss_nats / math.log(2)).all()  # > 1 byte/token


def test_plan_refuses_a_token_corpus_that_would_repeat(tmp_path, token_dir):
    c = data.load_corpus(token_dir)
    s = parse_sweep(SWEEP.format(path=token_dir, epochs=0.01), out_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"tokens\.max_epochs: .* training tokens"):
        sweep.check_epochs(s, c)


def test_missing_corpus_says_how_many_tokens_the_sweep_needs(tmp_path):
    text = SWEEP.format(path=tmp_path / "absent", epochs=0.5)
    with pytest.raises(ConfigError, match=r"needs a training split of at least 3.28e\+04 tokens"):
        parse_sweep(text, out_dir=str(tmp_path / "o"))


def test_fits_refuse_per_token_loss_across_tokenizers_and_fit_bits_per_byte():
    """Two tokenizers on one law in bits per byte (known truth): the per-token loss differs by
    each tokenizer's bytes per token, so fitting it together is refused; bits per byte recovers
    the law."""
    from jscale import analysis

    n = np.logspace(4, 7, 7)
    bpb = 0.9 + 40.0 * n**-0.35  # E, A, alpha
    rows = []
    for name, bytes_per_token in (("bytes", 1.0), ("bpe-8192-x", 3.6)):
        for i, size in enumerate(n):
            noise = 1 + 0.002 * ((-1) ** i)
            rows.append(
                {
                    "params_non_embedding": size,
                    "tokenizer": name,
                    "eval_bits_per_byte": bpb[i] * noise,
                    "eval_loss_nats": bpb[i] * noise * math.log(2) * bytes_per_token,
                }
            )
    df = pd.DataFrame(rows)
    with pytest.raises(analysis.AnalysisError, match=r"2 tokenizers \(bytes, bpe-8192-x\)"):
        analysis.fit(df, "saturating", n_bootstrap=0, interval="none")
    old = df.assign(tokenizer=df.tokenizer.where(df.tokenizer != "bytes"))  # records before it
    with pytest.raises(analysis.AnalysisError, match=r"2 tokenizers"):
        analysis.fit(old, "saturating", n_bootstrap=0, interval="none")
    f = analysis.fit(df, "saturating", y="eval_bits_per_byte", n_bootstrap=0, interval="none")
    assert f.params["alpha"] == pytest.approx(0.35, rel=0.05)
    assert f.params["E"] == pytest.approx(0.9, rel=0.05)


def test_without_token_bytes_bits_per_byte_are_nan_not_one_byte_per_token(tmp_path, tok, texts):
    d = _write_tokens(tmp_path / "nobytes", tok, texts[0][:3], texts[1], meta={"token_bytes": None})
    c = data.load_corpus(d)
    assert c.token_bytes is None and math.isnan(c.bytes_per_token())
    w = data.eval_batches(c.test, 32, 32 * 20)
    out = evaluate.bits_per_byte(np.full(len(w), 2.0), 32, data.window_bytes(w, c.token_bytes))
    assert math.isnan(out["eval_bits_per_byte"]) and "eval_text_bytes" not in out


def test_scan_cache_and_digest_follow_dtype_separator_and_token_bytes(tmp_path, tok, texts):
    """A file once read as one dtype is checked again as another (the id check is cached per
    dtype), and the corpus identity (config hashes) changes with separator and token_bytes."""
    d = _write_tokens(tmp_path / "id", tok, texts[0][:3], texts[1])
    base = data.load_corpus(d).digest
    meta = json.loads((d / "tokens.json").read_text())
    # read once as uint8 (every id < 256 passes), then as uint16 with a 300-id vocabulary: the
    # uint8 scan must not be reused, ids up to tok.vocab_size - 1 are beyond 300
    as_bytes = {**meta, "dtype": "uint8", "vocab_size": 256, "token_bytes": None}
    (d / "tokens.json").write_text(json.dumps(as_bytes))
    data.load_corpus(d)
    (d / "tokens.json").write_text(json.dumps({**as_bytes, "dtype": "uint16", "vocab_size": 300}))
    with pytest.raises(data.CorpusError, match=r"holds id \d+, beyond the vocabulary"):
        data.load_corpus(d)
    (d / "tokens.json").write_text(json.dumps({**meta, "separator": 10}))
    assert data.load_corpus(d).digest != base
    (d / "tokens.json").write_text(json.dumps(meta))
    np.save(d / "token_bytes.npy", np.ones(tok.vocab_size, np.int32))
    assert data.load_corpus(d).digest != base


def test_size_error_is_not_relabelled_and_a_missing_file_does_not_exist(tmp_path, tok, texts):
    d = _bad(tmp_path, tok, texts)
    (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-1])
    with pytest.raises(data.CorpusError) as e:
        data.load_corpus(d)
    assert str(e.value).startswith(f"token file {d / 'train.bin'} has ")
    with pytest.raises(data.CorpusError, match="does not exist"):
        data.load_corpus(tmp_path / "absent.bin")


def test_too_short_held_out_file_is_named(tmp_path, tok, texts):
    d = _write_tokens(tmp_path / "shortval", tok, texts[0][:3], [b"x" * 100])
    c = data.load_corpus(d)
    cfg = config_for_params(2e3, max_seq_len=64, vocab_size=c.vocab_size)
    with pytest.raises(data.CorpusError, match=r"val\.bin: held-out set would be empty"):
        train.check_train_inputs(cfg, TrainConfig(steps=1, seq_len=64), c)


def test_bpe_test_split_is_the_byte_corpus_test_split(tmp_path_factory, bpe_dir):
    """The model-selection / test cut of a BPE corpus falls between the same documents as the
    byte corpus of the same text: its test documents decode to the byte corpus's, byte for
    byte."""
    from tokenizers import Tokenizer

    text_dir = bpe_dir.parent / "text"
    byte = data.load_corpus(text_dir, val_percent=40)
    bpe = data.load_corpus(bpe_dir)
    hf = Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    test_ids = np.asarray(bpe.test)
    cuts = np.flatnonzero(test_ids == bpe.separator)
    docs = [hf.decode(list(map(int, p))).encode() for p in np.split(test_ids, cuts) if len(p)]
    docs = [doc for doc in docs if doc]
    want = [doc for doc in bytes(np.asarray(byte.test)).split(b"\0") if doc]
    assert docs == want and len(want) >= 1
    assert len(np.asarray(byte.select)) > 0 and len(np.asarray(bpe.select)) > 0


def test_a_byte_model_and_a_bpe_model_score_the_same_bytes(bpe_dir):
    """One document, scored whole by a byte model and by a BPE model (each window starts at the
    separator, so every token of the text is predicted): both divide by the text's hand-counted
    bytes, and bits per byte equal a float64 log-softmax of the logits."""
    import jax
    from tokenizers import Tokenizer

    from jscale import model
    from jscale.config import ModelConfig

    text = b"def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))  # five\n" * 3
    n = len(text)  # the hand count: every byte is ASCII text
    bpe = data.load_corpus(bpe_dir)
    hf = Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    hf.encode_special_tokens = True
    cases = {
        "bytes": ([data.SEPARATOR, *text], data.byte_token_bytes(), 256),
        "bpe": ([bpe.separator, *hf.encode(text.decode()).ids], bpe.token_bytes, bpe.vocab_size),
    }
    assert len(cases["bpe"][0]) < 0.8 * len(cases["bytes"][0])  # really other tokens
    for name, (ids, token_bytes, vocab) in cases.items():
        batch = np.asarray([ids], np.int32)
        bytes_N = data.window_bytes(batch, token_bytes)
        assert bytes_N.tolist() == [n], name
        cfg = ModelConfig(d_model=32, n_layers=1, n_heads=1, max_seq_len=len(ids), vocab_size=vocab)
        params = model.init_params(cfg, jax.random.key(0))
        ev = evaluate.evaluate(params, cfg, batch, batch_size=1, bytes_N=bytes_N)
        logits = np.asarray(model.apply(params, cfg, batch[:, :-1]), np.float64)[0]
        top = logits.max(axis=-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
        nats = -logp[np.arange(len(ids) - 1), batch[0, 1:]].sum()
        assert ev["eval_text_bytes"] == n, name
        assert ev["eval_bits_per_byte"] == pytest.approx(nats / math.log(2) / n, rel=1e-5), name
