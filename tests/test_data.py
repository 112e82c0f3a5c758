"""Byte corpora (default and user), the token cache, and batching."""

import collections
import math
import os
from pathlib import Path

import numpy as np
import pytest

from jscale import data
from jscale.data import CorpusError

SEP = 0


def _docs(tokens):
    """Split a token array at the separator into a list of documents (bytes)."""
    return bytes(np.asarray(tokens)).split(bytes([SEP]))


# --------------------------------------------------------------------------- default corpus


def _stdlib_text_files():
    """Independent listing of the default corpus: every non-empty .py file under the
    stdlib that is not in site-packages and has no NUL byte -> {relative path: bytes}."""
    root = Path(data.default_corpus_path()).resolve()
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if "site-packages" in rel_dir.parts:
            continue
        for name in filenames:
            if name.endswith(".py"):
                b = (Path(dirpath) / name).read_bytes()
                if b and b"\x00" not in b:
                    out[str(rel_dir / name)] = b
    return out


def test_default_corpus_basic(corpus):
    assert corpus.train.dtype == np.uint8 and corpus.val.dtype == np.uint8
    assert corpus.train.ndim == 1 and corpus.val.ndim == 1
    assert len(corpus.train) > 1_000_000 and len(corpus.val) > 10_000
    n_files = corpus.n_files_train + corpus.n_files_val
    assert 0.005 < corpus.n_files_val / n_files < 0.05  # nominal 2 % of files
    assert len(corpus.val) < 0.1 * len(corpus.train)
    assert corpus.name == str(Path(data.default_corpus_path()).resolve())


def test_default_corpus_is_the_stdlib_sources(corpus):
    files = _stdlib_text_files()
    assert corpus.n_files_train + corpus.n_files_val == len(files)
    # one separator between consecutive documents of a split, and none inside them
    assert int((np.asarray(corpus.train) == SEP).sum()) == corpus.n_files_train - 1
    assert int((np.asarray(corpus.val) == SEP).sum()) == corpus.n_files_val - 1
    total = sum(map(len, files.values()))
    assert len(corpus.train) + len(corpus.val) == total + (corpus.n_files_train - 1) + (
        corpus.n_files_val - 1
    )
    # every document is exactly one source file, and no file is in both splits
    by_content = collections.Counter(files.values())
    docs = collections.Counter(_docs(corpus.train)) + collections.Counter(_docs(corpus.val))
    assert docs == by_content


def test_default_corpus_split_is_deterministic(corpus, tmp_path):
    # rebuild from scratch into a fresh cache: same fingerprint, identical arrays
    again = data.load_corpus(cache=tmp_path / "fresh")
    assert (tmp_path / "fresh" / "corpora" / again.fingerprint / "meta.json").exists()
    assert again.fingerprint == corpus.fingerprint
    np.testing.assert_array_equal(np.asarray(again.train), np.asarray(corpus.train))
    np.testing.assert_array_equal(np.asarray(again.val), np.asarray(corpus.val))
    assert (again.n_files_train, again.n_files_val) == (corpus.n_files_train, corpus.n_files_val)


def test_default_corpus_cache_lives_under_env_dir(corpus, cache_dir):
    assert data.cache_dir() == cache_dir
    where = cache_dir / "corpora" / corpus.fingerprint
    assert (where / "meta.json").exists()
    np.testing.assert_array_equal(np.load(where / "val.npy"), np.asarray(corpus.val))


def test_second_load_uses_cache(corpus, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("cache rebuilt although it exists")

    monkeypatch.setattr(data, "_build_cache", boom)
    again = data.load_corpus()
    assert again.fingerprint == corpus.fingerprint
    assert len(again.train) == len(corpus.train)


def test_unigram_entropy_matches_counter(corpus):
    counts = collections.Counter(bytes(np.asarray(corpus.val)))
    n = sum(counts.values())
    ref = -sum(c / n * math.log2(c / n) for c in counts.values())
    assert corpus.unigram_entropy_bits() == pytest.approx(ref, rel=1e-12)
    assert 3.0 < ref < 6.0  # English-ish source code


# --------------------------------------------------------------------------- user corpora


def _random_text(rng, n):
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ABCDEFG0123456789\n.,;:()", np.uint8)
    return bytes(alphabet[rng.integers(0, len(alphabet), n)])


def _make_tree(root, n_files=200, size=2048, seed=0, reverse=False):
    """200 text files of 2 KB in a few subdirectories, plus things that must be skipped.
    Returns {relative path: content} of the text files."""
    rng = np.random.default_rng(seed)
    files = {f"sub{i % 5}/doc_{i:03d}.txt": _random_text(rng, size) for i in range(n_files)}
    items = sorted(files.items(), reverse=reverse)
    for rel, content in items:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    (root / "binary.bin").write_bytes(b"GIF89a\x00\x01\x02" + _random_text(rng, 3000))
    (root / "empty.txt").write_bytes(b"")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"HIDDEN-GIT-CONTENT " * 200)
    (root / "sub0" / ".hidden.txt").write_bytes(b"HIDDEN-FILE-CONTENT " * 200)
    return files


@pytest.fixture
def user_tree(tmp_path):
    root = tmp_path / "mycorpus"
    root.mkdir()
    return root, _make_tree(root)


def test_user_corpus_content(user_tree):
    root, files = user_tree
    c = data.load_corpus(root)
    assert c.name == str(root.resolve())
    assert c.n_files_train + c.n_files_val == len(files)
    assert c.n_files_val >= 1 and len(c.val) >= 1024
    train_docs, val_docs = _docs(c.train), _docs(c.val)
    assert len(train_docs) == c.n_files_train and len(val_docs) == c.n_files_val
    # all text, nothing else: the binary file, the empty file, .git and dotfiles are skipped
    assert sorted(train_docs + val_docs) == sorted(files.values())
    joined = bytes(np.asarray(c.train)) + bytes(np.asarray(c.val))
    assert b"HIDDEN" not in joined and b"GIF89a" not in joined
    # non-separator bytes are exactly the files' bytes
    assert len(c.train) + len(c.val) - (c.n_files_train - 1) - (c.n_files_val - 1) == sum(
        map(len, files.values())
    )
    # within a split, documents keep the sorted order of their paths
    path_of = {v: k for k, v in files.items()}
    for docs in (train_docs, val_docs):
        paths = [path_of[d] for d in docs]
        assert paths == sorted(paths)


def test_user_corpus_split_depends_only_on_relative_paths(tmp_path):
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    a.mkdir()
    b.mkdir(parents=True)
    files_a = _make_tree(a)
    files_b = _make_tree(b, reverse=True)  # same names and contents, created in reverse order
    assert files_a == files_b
    ca, cb = data.load_corpus(a), data.load_corpus(b)
    assert ca.fingerprint != cb.fingerprint  # different roots are different corpora
    np.testing.assert_array_equal(np.asarray(ca.val), np.asarray(cb.val))
    np.testing.assert_array_equal(np.asarray(ca.train), np.asarray(cb.train))


def test_user_corpus_val_percent(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    files = _make_tree(root)
    c = data.load_corpus(root, val_percent=50)
    assert 0.3 < c.n_files_val / len(files) < 0.7
    assert sorted(_docs(c.train) + _docs(c.val)) == sorted(files.values())


def test_user_corpus_cache_invalidated_when_a_file_changes(user_tree):
    root, files = user_tree
    c1 = data.load_corpus(root)
    target = root / "sub1" / "doc_001.txt"
    target.write_bytes(files["sub1/doc_001.txt"] + b"APPENDED-TEXT")
    c2 = data.load_corpus(root)
    assert c2.fingerprint != c1.fingerprint
    joined = bytes(np.asarray(c2.train)) + bytes(np.asarray(c2.val))
    assert b"APPENDED-TEXT" in joined


def test_single_file_corpus_holds_out_tail(tmp_path):
    rng = np.random.default_rng(5)
    content = _random_text(rng, 200_000)
    f = tmp_path / "book.txt"
    f.write_bytes(content)
    c = data.load_corpus(f)
    assert len(c.val) == 4_000  # the last 2 % of the bytes
    assert bytes(np.asarray(c.train)) == content[:-4_000]
    assert bytes(np.asarray(c.val)) == content[-4_000:]
    c10 = data.load_corpus(f, val_percent=10)
    assert bytes(np.asarray(c10.val)) == content[-20_000:]
    assert bytes(np.asarray(c10.train)) + bytes(np.asarray(c10.val)) == content


def test_unigram_entropy_known_values(tmp_path):
    f = tmp_path / "ab.txt"
    f.write_bytes(b"ab" * 50_000)
    assert data.load_corpus(f).unigram_entropy_bits() == pytest.approx(1.0, abs=1e-12)
    g = tmp_path / "abcd.txt"
    g.write_bytes(b"abcd" * 25_000)
    assert data.load_corpus(g).unigram_entropy_bits() == pytest.approx(2.0, abs=1e-12)


# --------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    p = tmp_path / "does-not-exist"
    with pytest.raises(CorpusError) as e:
        data.load_corpus(p)
    assert str(p) in str(e.value)


def test_empty_directory(tmp_path):
    p = tmp_path / "empty-dir"
    p.mkdir()
    with pytest.raises(CorpusError) as e:
        data.load_corpus(p)
    assert str(p) in str(e.value)


def test_directory_with_only_empty_and_binary_files(tmp_path, cache_dir):
    p = tmp_path / "junk"
    p.mkdir()
    (p / "a.txt").write_bytes(b"")
    (p / "b.bin").write_bytes(b"\x00\x01\x02" * 1000)
    (p / ".hidden.txt").write_bytes(b"text but hidden " * 1000)
    before = set((cache_dir / "corpora").iterdir()) if (cache_dir / "corpora").exists() else set()
    with pytest.raises(CorpusError) as e:
        data.load_corpus(p)
    assert str(p) in str(e.value)
    after = set((cache_dir / "corpora").iterdir()) if (cache_dir / "corpora").exists() else set()
    assert after == before  # a failed build leaves no (incomplete) cache entry


def test_single_binary_file(tmp_path):
    p = tmp_path / "image.png"
    p.write_bytes(b"\x89PNG\x00" * 1000)
    with pytest.raises(CorpusError) as e:
        data.load_corpus(p)
    assert str(p) in str(e.value)


def test_too_small_validation_split(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_bytes(b"hello world\n" * 100)  # 1200 bytes: 2 % is 24 bytes
    with pytest.raises(CorpusError) as e:
        data.load_corpus(p)
    assert str(p) in str(e.value) and "1024" in str(e.value)


@pytest.mark.parametrize("vp", [0, 100, -1])
def test_bad_val_percent(tmp_path, vp):
    p = tmp_path / "x.txt"
    p.write_bytes(b"x" * 100_000)
    with pytest.raises(CorpusError, match="val_percent"):
        data.load_corpus(p, val_percent=vp)


def test_corpus_error_is_value_error():
    assert issubclass(CorpusError, ValueError)


# --------------------------------------------------------------------------- batches


def _window_starts(tokens, rows):
    """For each row, every start s with tokens[s:s+len(row)] == row."""
    win = np.lib.stride_tricks.sliding_window_view(np.asarray(tokens), rows.shape[1])
    return [np.flatnonzero((win == r).all(axis=1)) for r in rows]


@pytest.fixture(scope="module")
def random_tokens():
    return np.random.default_rng(0).integers(0, 256, 5_000).astype(np.uint8)


def test_train_batch_shape_dtype_and_windows(random_tokens):
    b = data.train_batch(random_tokens, seed=3, step=7, batch_size=16, seq_len=24)
    assert b.shape == (16, 25) and b.dtype == np.int32
    assert b.min() >= 0 and b.max() < 256
    for starts in _window_starts(random_tokens, b):
        assert len(starts) == 1  # each row is one contiguous window of the tokens


def test_train_batch_pure_function_of_seed_and_step(random_tokens):
    a = data.train_batch(random_tokens, 3, 7, 8, 16)
    np.testing.assert_array_equal(a, data.train_batch(random_tokens, 3, 7, 8, 16))
    assert not np.array_equal(a, data.train_batch(random_tokens, 3, 8, 8, 16))
    assert not np.array_equal(a, data.train_batch(random_tokens, 4, 7, 8, 16))
    # a step's batch does not depend on which steps were drawn before it
    for s in range(5):
        data.train_batch(random_tokens, 3, s, 8, 16)
    np.testing.assert_array_equal(a, data.train_batch(random_tokens, 3, 7, 8, 16))


def test_train_batch_starts_cover_the_tokens():
    tokens = np.random.default_rng(1).integers(1, 256, 64).astype(np.uint8)
    T = 8
    valid = len(tokens) - T  # starts 0 .. len - T - 1 give full windows of T + 1
    seen = set()
    for step in range(300):
        b = data.train_batch(tokens, 0, step, 4, T)
        for starts in _window_starts(tokens, b):
            assert len(starts) == 1 and 0 <= starts[0] < valid
            seen.add(int(starts[0]))
    assert seen == set(range(valid))  # every full window, the last one included, is drawn


def test_train_batch_on_real_corpus(corpus):
    train_bytes = bytes(np.asarray(corpus.train))
    b = data.train_batch(corpus.train, 0, 0, 8, 64)
    for row in b:
        assert train_bytes.find(bytes(row.astype(np.uint8))) >= 0


def test_train_batch_exactly_one_window():
    tokens = np.arange(9, dtype=np.uint8)
    np.testing.assert_array_equal(
        data.train_batch(tokens, 0, 0, 2, 8), np.stack([np.arange(9)] * 2)
    )


def test_train_batch_too_few_tokens():
    with pytest.raises(CorpusError):
        data.train_batch(np.zeros(10, np.uint8), 0, 0, 2, 16)


def _starts(tokens, e):
    """Start offset of each row of ``e`` in ``tokens`` (asserting each row is a window)."""
    out = []
    for row in e:
        hits = [
            s
            for s in range(len(tokens) - len(row) + 1)
            if np.array_equal(tokens[s : s + len(row)], row)
        ]
        assert hits, "row is not a contiguous window of the tokens"
        out.append(hits[0])
    return np.array(out)


def test_eval_batches_spread_non_overlapping_windows(random_tokens):
    T = 32
    n_avail = (len(random_tokens) - 1) // T
    e = data.eval_batches(random_tokens, T, 1_000)
    assert e.dtype == np.int32
    assert e.shape == (1_000 // T, T + 1)
    starts = _starts(random_tokens, e)
    assert np.all(starts % T == 0)  # aligned windows of the split
    assert np.all(np.diff(starts) >= T)  # increasing, targets never overlap
    assert starts[0] == 0
    assert starts[-1] >= (n_avail - n_avail // len(e) - 1) * T  # reaches the end of the split
    np.testing.assert_array_equal(e, data.eval_batches(random_tokens, T, 1_000))  # fixed


def test_eval_batches_capped_by_available_tokens(random_tokens):
    T = 64
    e = data.eval_batches(random_tokens, T, 10**9)
    assert len(e) == (len(random_tokens) - 1) // T
    # all windows: every target token is predicted exactly once, in order
    np.testing.assert_array_equal(e[:, 1:].reshape(-1), random_tokens[1 : len(e) * T + 1])


def test_eval_batches_too_few_tokens():
    with pytest.raises(CorpusError):
        data.eval_batches(np.zeros(16, np.uint8), 16, 1000)


def test_eval_batches_on_real_corpus(corpus):
    e = data.eval_batches(corpus.val, 32, 4096)
    assert e.shape == (128, 33)
    n_avail = (len(corpus.val) - 1) // 32
    start = (5 * n_avail // 128) * 32  # documented spacing: window floor(i * n_avail / n_seq)
    np.testing.assert_array_equal(e[5], np.asarray(corpus.val[start : start + 33], np.int32))
    assert start > 4 * 32 * 5  # really spread out, not the first windows


def test_directory_with_too_few_files_for_a_file_split_holds_out_bytes(tmp_path, cache_dir):
    rng = np.random.default_rng(7)
    (tmp_path / "only.txt").write_bytes(_random_text(rng, 100_000))
    c = data.load_corpus(tmp_path, val_percent=2.0)
    content = (tmp_path / "only.txt").read_bytes()
    assert len(c.val) == int(len(content) * 0.02)
    assert (
        bytes(np.asarray(c.train)) + bytes(np.asarray(c.val)) == content
    )  # a byte split, in order


def test_empty_corpus_path_string():
    with pytest.raises(CorpusError, match="empty"):
        data.load_corpus("")


def test_eval_documents_count_the_separators_before_each_window():
    """Documents of 100, 50 and 200 tokens joined by separators: each window's document is the
    one its first token lies in (by hand)."""
    from jscale.data import SEPARATOR, eval_batches, eval_documents

    docs = [np.full(100, 7), np.full(50, 8), np.full(200, 9)]
    tokens = np.concatenate([docs[0], [SEPARATOR], docs[1], [SEPARATOR], docs[2]]).astype(np.uint8)
    windows = eval_batches(tokens, 10, 10 * 35)
    ids = eval_documents(tokens, 10, 10 * 35)
    assert len(ids) == len(windows) == 35
    first = windows[:, 0]
    assert list(ids[first == 7]) == [0] * int((first == 7).sum())
    # window starts 0, 10, ..., 340; separators at 100 and 151: a window starting on a
    # separator predicts the next document, so it belongs to it
    starts = np.arange(35) * 10
    assert list(ids) == [int(s >= 100) + int(s >= 151) for s in starts]
