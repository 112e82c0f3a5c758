"""Fault injection: garbled caches, checkpoints and tables, unreadable corpora, non-UTF-8
configs, a full disk, a sweep whose every model diverges, fit arguments of the wrong kind and
unsafe cache permissions.  A cache is rebuilt; everything else is one line, ``jscale: error:``
(or ``jscale: failed:``) naming the file or argument, with the documented exit status and no
traceback.  Inputs are tiny and nothing is trained: the whole module runs in seconds."""

import errno
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from jscale import analysis, checkpoint, data, runtime, train
from jscale.cli import main


def _one_line(capsys, prefix="jscale: error:") -> str:
    """The command's stderr, which must be exactly one line starting with ``prefix``."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def _text(n: int, seed: int = 0) -> bytes:
    alphabet = np.frombuffer(b"abcdefghij klmnop\nqrstuvwxyz.,()", np.uint8)
    return bytes(alphabet[np.random.default_rng(seed).integers(0, len(alphabet), n)])


@pytest.fixture
def corpus_dir(tmp_path):
    """A fresh three-file corpus (its own fingerprint, so its token cache is built anew)."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(3):
        (root / f"doc{i}.txt").write_bytes(_text(40_000, seed=i))
    return root


# ------------------------------------------------------------------ token cache (items 4, 10)


def _flip(p: Path):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


CORRUPTIONS = {
    "train-byte-flipped": lambda w: _flip(w / "train.npy"),
    "val-truncated": lambda w: (w / "val.npy").write_bytes((w / "val.npy").read_bytes()[:200]),
    "train-empty": lambda w: (w / "train.npy").write_bytes(b""),
    "meta-garbled": lambda w: (w / "meta.json").write_bytes(b'{"n_files_train": 2, \xff'),
    "meta-not-a-table": lambda w: (w / "meta.json").write_text("[1, 2]"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_garbled_token_cache_is_rebuilt_with_the_original_tokens(corrupt, tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_bytes(_text(60_000))
    first = data.load_corpus(src, cache=tmp_path / "cache")
    where = tmp_path / "cache" / "corpora" / first.fingerprint
    want = {f: (where / f).read_bytes() for f in ("train.npy", "val.npy")}
    train_tokens, val_tokens = np.array(first.train), np.array(first.val)
    assert set(json.loads((where / "meta.json").read_text())["digest"]) == {"train", "val"}
    del first  # drop the memory maps before garbling the files under them

    CORRUPTIONS[corrupt](where)
    again = data.load_corpus(src, cache=tmp_path / "cache")
    np.testing.assert_array_equal(np.asarray(again.train), train_tokens)
    np.testing.assert_array_equal(np.asarray(again.val), val_tokens)
    assert {f: (where / f).read_bytes() for f in want} == want  # rewritten, byte for byte


def test_a_broken_cache_of_an_unreadable_corpus_is_one_corpus_error(
    corpus_dir, tmp_path, monkeypatch
):
    c = data.load_corpus(corpus_dir, cache=tmp_path / "cache")
    (tmp_path / "cache" / "corpora" / c.fingerprint / "train.npy").write_bytes(b"")
    del c
    victim = corpus_dir / "doc1.txt"
    real = Path.read_bytes

    def read_bytes(self):
        if self == victim:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(data.CorpusError) as e:
        data.load_corpus(corpus_dir, cache=tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and str(victim) in msg and "permission denied" in msg


def _modes(where: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in [where, *where.iterdir()]}


def test_the_token_cache_of_a_private_corpus_is_private(corpus_dir, tmp_path):
    for f in corpus_dir.iterdir():
        f.chmod(0o600)
    corpus_dir.chmod(0o700)
    c = data.load_corpus(corpus_dir, cache=tmp_path / "cache")
    modes = _modes(tmp_path / "cache" / "corpora" / c.fingerprint)
    assert set(modes) >= {c.fingerprint, "train.npy", "val.npy", "meta.json"}
    assert all(m & 0o077 == 0 for m in modes.values()), {k: oct(m) for k, m in modes.items()}


def test_a_cache_built_before_the_corpus_went_private_is_made_private(corpus_dir, tmp_path):
    for f in corpus_dir.iterdir():
        f.chmod(0o644)
    c = data.load_corpus(corpus_dir, cache=tmp_path / "cache")
    where = tmp_path / "cache" / "corpora" / c.fingerprint
    for p in [where, *where.iterdir()]:  # as an older jscale wrote them
        p.chmod(0o755 if p.is_dir() else 0o644)
    for f in corpus_dir.iterdir():
        f.chmod(0o600)  # modes are not in the fingerprint (mtimes are): the same cache
    assert data.load_corpus(corpus_dir, cache=tmp_path / "cache").fingerprint == c.fingerprint
    modes = _modes(where)
    assert all(m & 0o077 == 0 for m in modes.values()), {k: oct(m) for k, m in modes.items()}


# --------------------------------------------------------------------- checkpoints (item 8)


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garble_data(p):  # a flipped byte in the array data: the zip member's CRC-32 fails
    b = bytearray(p.read_bytes())
    b[b.index(b"\x93NUMPY") + 200] ^= 0xFF
    p.write_bytes(bytes(b))


@pytest.mark.parametrize(
    "corrupt",
    [_truncate, _garble_data, lambda p: p.write_bytes(b""), lambda p: p.write_bytes(b"PK\x03\x04")],
    ids=["truncated", "bad-crc", "empty", "torn-header"],
)
def test_a_corrupt_checkpoint_is_one_checkpoint_error(corrupt, tmp_path):
    tree = {"w": np.arange(256, dtype=np.float32), "b": np.ones(3, np.float32)}
    path = checkpoint.save(tmp_path / "model.npz", tree, {"step": 1})
    template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    assert checkpoint.load(path, template)[1] == {"step": 1}
    corrupt(path)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path, template)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "delete it" in msg and "--retrain" in msg


# --------------------------------------------------------- configs and tables (item 8, CLI)


def test_a_non_utf8_sweep_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('name = "café"\n[sizes]\nparams_non_embedding = [1e4]\n'.encode("latin-1"))
    assert main(["sweep", str(cfg), "--plan"]) == 2
    line = _one_line(capsys)
    assert str(cfg) in line and "UTF-8" in line


TABLES = {
    "empty": b"",
    "not-utf8": b"\xff\xfe\x00\x81garbage,\x80\n\x93\x94,1\n",
    "ragged": b"params_non_embedding,eval_loss_nats\n1e4,3.2\n1e5,3.0,7,8\n",
}


@pytest.mark.parametrize("command", ["fit", "figures"])
@pytest.mark.parametrize("table", TABLES, ids=list(TABLES))
def test_a_garbled_results_table_is_one_line(command, table, tmp_path, capsys):
    csv = tmp_path / "results.csv"
    csv.write_bytes(TABLES[table])
    argv = [command, str(csv)] + (["--out", str(tmp_path / "fig")] if command == "figures" else [])
    assert main(argv) == 2
    assert str(csv) in _one_line(capsys)


# ----------------------------------------------------------------- corpus permission (item 8)


@pytest.mark.parametrize("where", [".", "sub"])
def test_an_unreadable_corpus_directory_is_one_line(where, corpus_dir, monkeypatch, capsys):
    (corpus_dir / "sub").mkdir()
    (corpus_dir / "sub" / "more.txt").write_bytes(_text(5000))
    denied = (corpus_dir / where).resolve()
    real = os.scandir

    def scandir(path="."):  # what a directory without read permission does (tests run as root)
        if Path(os.fsdecode(path)).resolve() == denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main(["train", "--corpus", str(corpus_dir), "--steps", "1", "--quiet"]) == 2
    line = _one_line(capsys)
    assert f"cannot read corpus directory {denied} (permission denied)" in line, line


# ------------------------------------------------------------------------ full disk (item 8)

SWEEP = """
name = "faults"
precisions = ["fp32"]
[sizes]
params_non_embedding = [2e3]
[tokens]
fixed = 4096
[train]
schedule = "cosine"
batch_size = 4
seq_len = 32
eval_tokens = 256
[latency]
enabled = false
[corpus]
path = "{corpus}"
"""


def _sweep(tmp_path, corpus_dir) -> Path:
    cfg = tmp_path / "faults.toml"
    cfg.write_text(SWEEP.format(corpus=corpus_dir))
    return cfg


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_full_disk_is_one_line_saying_how_to_resume(
    command, corpus_dir, tmp_path, monkeypatch, capsys
):
    def full(file, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", os.fsdecode(file))

    monkeypatch.setattr(np, "save", full)  # the token cache of the fresh corpus is written first
    argv = (
        ["train", "--corpus", str(corpus_dir), "--steps", "1", "--quiet"]
        if command == "train"
        else ["sweep", str(_sweep(tmp_path, corpus_dir)), "--out", str(tmp_path / "out"), "--quiet"]
    )
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("jscale:")]  # a sweep also logs
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("jscale: error: the disk is full")
    assert "whole" in lines[0] and "rerun the same command" in lines[0]


# -------------------------------------------------------- every model diverges (item 8)


def test_a_sweep_whose_every_model_diverges_fails_with_exit_1(
    corpus_dir, tmp_path, monkeypatch, capsys
):
    def diverge(self, *a, **k):
        raise train.TrainingDiverged("training loss is nan at optimizer step 1 of 32")

    monkeypatch.setattr(train.Trainer, "advance", diverge)
    out = tmp_path / "out"
    assert main(["sweep", str(_sweep(tmp_path, corpus_dir)), "--out", str(out), "--quiet"]) == 1
    cap = capsys.readouterr()
    lines = [x for x in cap.err.splitlines() if x.startswith("jscale:")]
    assert "Traceback" not in cap.err and lines, cap.err
    assert all(x.startswith("jscale: failed:") and "step 1" in x for x in lines), lines
    assert not (out / "results.csv").exists() and "results:" not in cap.out


# ------------------------------------------------------------- fit arguments (item 9)

X = [1e3, 1e4, 1e5, 1e6, 1e7]
Y = [4.0, 3.5, 3.2, 3.05, 3.0]


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(x=None), "x"),
        (dict(y=None), "y"),
        (dict(x=["a", "b", "c", "d", "e"]), "x"),
        (dict(y=[4.0, "high", 3.2, 3.1, 3.0]), "y"),
        (dict(df="results.csv"), "df"),
        (dict(form=["saturating"]), "form"),
        (dict(n_bootstrap=2.5), "n_bootstrap"),
        (dict(n_bootstrap="10"), "n_bootstrap"),
        (dict(n_bootstrap=True), "n_bootstrap"),
        (dict(n_bootstrap=None), "n_bootstrap"),
        (dict(n_bootstrap=-1), "n_bootstrap"),
        (dict(level="0.95"), "level"),
    ],
)
def test_fit_arguments_of_the_wrong_kind_are_analysis_errors(kw, name):
    args = dict(df=None, form="saturating", x=X, y=Y) | kw
    with pytest.raises(analysis.AnalysisError, match=name):
        analysis.fit(args.pop("df"), **args)


def test_fit_rejects_non_numeric_columns_by_name():
    import pandas as pd

    df = pd.DataFrame({"N": [f"{x:g} params" for x in X], "loss": Y, "bad": ["?"] * 5})
    for x, y, col in (("N", "loss", "N"), (X, "bad", "bad")):
        with pytest.raises(analysis.AnalysisError, match=f"column '{col}'"):
            analysis.fit(df, x=x, y=y)


# ------------------------------------------------------ compilation cache (item 11)


@pytest.fixture
def jax_cache_config():
    """Leave JAX's compilation-cache settings as the session set them, whatever the test does."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {k: getattr(jax.config, k) for k in keys}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)


@pytest.mark.parametrize(
    "setup, why, culprit",
    [
        (lambda d: d.chmod(0o777), "writable by other users", "xla"),
        (lambda d: d.chmod(0o720), "writable by other users", "xla"),
        (lambda d: d.parent.chmod(0o777), "writable by other users", "shared"),
        (lambda d: None, "not you", "xla"),  # owned by someone else (getuid is faked below)
    ],
    ids=["other-write", "group-write", "parent-writable", "other-owner"],
)
def test_a_compilation_cache_others_can_write_is_refused(
    setup, why, culprit, tmp_path, monkeypatch, jax_cache_config
):
    d = tmp_path / "shared" / "xla"
    d.mkdir(parents=True, mode=0o700)
    d.parent.chmod(0o700)
    setup(d)
    if why == "not you":
        monkeypatch.setattr(os, "getuid", lambda: os.stat(d).st_uid + 1)
    before = jax.config.jax_compilation_cache_dir
    with pytest.raises(runtime.CacheError) as e:
        runtime.enable_compilation_cache(d)
    msg = str(e.value)
    assert why in msg and "\n" not in msg and str(d) in msg
    fix = d if culprit == "xla" else d.parent
    assert f"chmod go-w {fix}`" in msg and "JSCALE_CACHE_DIR" in msg
    assert jax.config.jax_compilation_cache_dir == before  # nothing was switched on


def test_a_private_cache_under_a_sticky_shared_directory_is_accepted(tmp_path):
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    (shared / "xla").mkdir(mode=0o700)
    runtime._check_private(shared / "xla")  # no error


def test_the_command_line_refuses_a_shared_cache_in_one_line(
    tmp_path, monkeypatch, capsys, jax_cache_config
):
    (tmp_path / "cache" / "xla").mkdir(parents=True)
    (tmp_path / "cache" / "xla").chmod(0o777)
    monkeypatch.setenv("JSCALE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["ladder", "--lo", "1e4", "--hi", "1e5"]) == 2
    line = _one_line(capsys)
    assert str(tmp_path / "cache" / "xla") in line and "chmod go-w" in line
