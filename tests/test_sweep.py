"""The sweep runner: config validation, records, resume, stale configs, kill -9 safety."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jscale import checkpoint, evaluate, model, results, sweep, train
from jscale.config import ConfigError, ModelConfig, count_params
from jscale.sweep_config import parse_sweep

TINY = """
name = "tiny"
seeds = [0]
precisions = {precisions}
[sizes]
params_non_embedding = [2e3, 8e3]
[tokens]
fixed = 8192
[train]
batch_size = 4
seq_len = 32
lr = {lr}
eval_tokens = 512
steps_per_call = 4
[latency]
prompt_tokens = 8
gen_tokens = 4
repeats = 2
warmup = 1
"""


def tiny(out, precisions=("fp32", "int8"), lr=3e-3):
    text = TINY.format(precisions=json.dumps(list(precisions)), lr=lr)
    return parse_sweep(text, out_dir=str(out))


def _forbid_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the sweep retrained a model it had a checkpoint for")

    monkeypatch.setattr(train.Trainer, "advance", boom)


@pytest.fixture(scope="module")
def done(tmp_path_factory, corpus):
    """A finished tiny sweep: 2 sizes x (fp32, int8)."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    s = tiny(out)
    r = sweep.run_sweep(s, progress=False, echo=False)
    return s, r, out


def copy_of(done, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(done[2], out)
    return out


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda t: t + "\nbogus = 1\n", "bogus"),
        (lambda t: t.replace("lr = 0.003", "lr = 0.003\nlearning_rate = 1"), "train.learning_rate"),
        (lambda t: t.replace('"int8"]', '"int2"]'), "precisions"),
        (lambda t: t.replace("seeds = [0]", "seeds = [-1]"), "seeds"),
        (lambda t: t.replace("seeds = [0]", "seeds = [0, 0]"), "seeds"),
        (lambda t: t.replace("fixed = 8192", "fixed = 0"), "tokens.fixed"),
        (lambda t: t.replace("fixed = 8192", "fixed = 8192\nper_param = 20"), "tokens"),
        (
            lambda t: t.replace(
                "params_non_embedding = [2e3, 8e3]",
                "params_non_embedding = [2e3, 8e3]\nladder = {lo = 1e4, hi = 1e5}",
            ),
            "sizes",
        ),
        (lambda t: t.replace("[2e3, 8e3]", "[2e3, 2.01e3]"), "sizes"),
        (lambda t: t.replace("[2e3, 8e3]", "[10, 8e3]"), "sizes.params_non_embedding"),
        (lambda t: t.replace("batch_size = 4", "batch_size = 0"), "batch_size"),
        (lambda t: t.replace("repeats = 2", "repeats = 1.5"), "latency.repeats"),
        (lambda t: t.replace("repeats = 2", "repetitions = 2"), "latency.repetitions"),
        (
            lambda t: t.replace("repeats = 2", 'repeats = 2\nkernel_layout = "row"'),
            "latency.kernel_layout",
        ),
        (lambda t: t.replace("repeats = 2", 'repeats = 2\nmin_rows = "four"'), "latency.min_rows"),
        (lambda t: t.replace("repeats = 2", "repeats = 2\nmin_rows = 0"), "latency.min_rows"),
        (lambda t: t.replace("repeats = 2", "repeats = 2\nmin_rows = true"), "latency.min_rows"),
        (lambda t: t + '\n[corpus]\npath = "/no/such/corpus"\n', "corpus.path"),
        (lambda t: t.replace("[tokens]\nfixed = 8192\n", ""), "[tokens]"),
        (lambda t: t.replace("lr = 0.003", "lr = -1.0"), "lr"),
        (lambda t: t + "\n[[oops\n", "not valid TOML"),
        # the token, seed and lr axes
        (lambda t: t.replace("fixed = 8192", "fixed = [8192, 8192]"), "tokens.fixed"),
        (lambda t: t.replace("fixed = 8192", "fixed = []"), "tokens.fixed"),
        (lambda t: t.replace("fixed = 8192", 'fixed = ["8k"]'), "tokens.fixed"),
        (lambda t: t.replace("fixed = 8192", "per_param = [20, -1]"), "tokens.per_param"),
        (lambda t: t.replace("fixed = 8192", "compute = [0]"), "tokens.compute"),
        (lambda t: t.replace("fixed = 8192", "compute = [1e9]\nfixed = 8192"), "tokens"),
        (
            lambda t: t.replace("fixed = 8192", "fixed = 8192\ntokens_per_param = [1, 9]"),
            "tokens.tokens_per_param",
        ),
        (
            lambda t: t.replace("fixed = 8192", "compute = [1e9]\ntokens_per_param = [5]"),
            "tokens.tokens_per_param",
        ),
        (
            lambda t: t.replace("fixed = 8192", "compute = [1e9]\ntokens_per_param = [9, 1]"),
            "tokens.tokens_per_param",
        ),
        (
            lambda t: t.replace("fixed = 8192", "compute = [1e3]\ntokens_per_param = [1, 2]"),
            "tokens",
        ),  # no (size, budget) pair left in the window
        (lambda t: t.replace("fixed = 8192", "fixed = 8192\nmax_epochs = 0"), "tokens.max_epochs"),
        (lambda t: t.replace("lr = 0.003", "lr = [0.003, 0.003]"), "train.lr"),
        (lambda t: t.replace("lr = 0.003", "lr = [0.003, -1]"), "train.lr"),
        (lambda t: t.replace("lr = 0.003", 'lr = 0.003\nschedule = "step"'), "train.schedule"),
        (lambda t: t.replace("lr = 0.003", "lr = 0.003\ncooldown_frac = 0"), "train.cooldown_frac"),
        (
            lambda t: t.replace("lr = 0.003", 'lr = 0.003\ncooldown_shape = "cos"'),
            "train.cooldown_shape",
        ),
        (lambda t: t + "\n[replicates]\nseeds = [1]\n", "replicates.sizes"),
        (lambda t: t + "\n[replicates]\nsizes = [2e3]\n", "replicates.seeds"),
        (lambda t: t + "\n[replicates]\nseeds = [0]\nsizes = [2e3]\n", "replicates.seeds"),
        (lambda t: t + "\n[replicates]\nseeds = [1]\nsizes = [3e3]\n", "replicates.sizes"),
        (lambda t: t + "\n[replicates]\nseeds = [1]\nsizes = [2e3]\nn = 2\n", "replicates.n"),
        (lambda t: t.replace("[2e3, 8e3]", "[2e3, 8e3]\nn_layers = 0"), "sizes.n_layers"),
        (lambda t: t.replace("[2e3, 8e3]", "[2e3, 8e3]\nn_heads = 0"), "sizes.n_heads"),
        (
            lambda t: t.replace("[2e3, 8e3]", "[2e3, 8e3]\nn_heads = 2\nhead_dim = 16"),
            "sizes.n_heads",
        ),
    ],
)
def test_invalid_configs_name_the_key(edit, key):
    text = edit(TINY.format(precisions='["fp32", "int8"]', lr=0.003))
    with pytest.raises(ConfigError) as e:
        parse_sweep(text, where="exp.toml")
    assert "exp.toml" in str(e.value) and key in str(e.value)


def test_config_resolves_sizes_tokens_and_lr_rule():
    s = parse_sweep("""
seeds = [0, 1]
train_precisions = ["fp32", "bf16"]
[sizes]
ladder = { lo = 1e4, hi = 1e5, per_decade = 2 }
[tokens]
per_param = 20
min = 300000
[train]
lr = 1e-3
lr_ref_params = 1e5
lr_exponent = 0.5
""")
    assert len(s.train_points) == 3 * 2 * 2 and s.n_records == 3 * 2 * 2 * 4
    for tp in s.train_points:
        n = tp.model.n_layers * (12 * tp.model.d_model**2 + 2 * tp.model.d_model) + tp.model.d_model
        assert math.isclose(tp.train.lr, 1e-3 * (n / 1e5) ** -0.5, rel_tol=1e-12)
        assert tp.train.tokens == max(round(20 * n), 300_000)
        assert tp.model.max_seq_len >= 128 + 32  # room for the latency prompt + generation
    assert [tp.size_target for tp in s.train_points][::4] == pytest.approx([1e4, 10**4.5, 1e5])
    assert {(tp.seed, tp.train_precision) for tp in s.train_points} == {
        (0, "fp32"),
        (0, "bf16"),
        (1, "fp32"),
        (1, "bf16"),
    }


def test_token_axes_resolve_budgets_windows_and_replicates():
    base = TINY.format(precisions='["fp32"]', lr=0.003)
    s = parse_sweep(
        base.replace("fixed = 8192", "compute = [1e9, 4e9]\ntokens_per_param = [5, 100]")
    )
    n = {tp.size_target: count_params(tp.model)["non_embedding"] for tp in s.train_points}
    pairs = sorted((tp.size_target, tp.compute_budget, tp.budget) for tp in s.train_points)
    want = sorted(
        (t, c, round(c / (6 * n[t])))
        for t in (2e3, 8e3)
        for c in (1e9, 4e9)
        if 5 <= round(c / (6 * n[t])) / n[t] <= 100
    )
    assert pairs == want and len(want) >= 2  # tokens = C / (6 N), inside the window only
    s = parse_sweep(
        base.replace("fixed = 8192", "per_param = [2, 8]").replace(
            "lr = 0.003", 'lr = [1e-3, 3e-3]\nschedule = "wsd"'
        )
        + "\n[replicates]\nseeds = [5]\nsizes = [8e3]\n"
    )
    got = {(tp.size_target, tp.seed, tp.train.lr, tp.budget) for tp in s.train_points}
    assert len(got) == len(s.train_points) == 2 * 2 * 2 + 1 * 2 * 2  # sizes x lrs x budgets
    assert {tp.seed for tp in s.train_points if tp.size_target == 2e3} == {0}
    assert {tp.seed for tp in s.train_points if tp.size_target == 8e3} == {0, 5}
    for group in s.groups():  # one trunk per (size, seed, lr): budgets ascending, one warm-up
        assert len({(p.size_target, p.seed, p.train.lr) for p in group}) == 1 and len(group) == 2
        assert group[0].budget < group[1].budget
        assert len({p.train.total_warmup_steps for p in group}) == 1
        assert group[0].train.total_warmup_steps == round(0.05 * group[0].train.total_steps)


def test_design_notes_say_what_cannot_be_identified():
    base = TINY.format(precisions='["fp32"]', lr=0.003)
    notes = " ".join(parse_sweep(base).notes)
    assert "Chinchilla form" in notes and "not identified" in notes and "one seed" in notes
    s = parse_sweep(
        base.replace("fixed = 8192", "fixed = [4096, 8192]")
        + "\n[replicates]\nseeds = [1]\nsizes = [2e3]\n"
    )
    assert s.notes == ()
    s = parse_sweep(base.replace("fixed = 8192", "compute = [1e9, 4e9]"))
    assert any("IsoFLOP budget" in n and "needs 3" in n for n in s.notes)


def test_experiment_configs_are_valid_and_big_enough():
    root = Path(__file__).resolve().parent.parent / "experiments"
    from jscale.sweep_config import load_sweep

    # paper.toml names a token corpus a user makes first (docs/data.md): without it the config
    # is refused with the size it needs; its design is checked on the default corpus
    with pytest.raises(ConfigError, match=r"needs a training split of at least 7.98e\+09 tokens"):
        load_sweep(root / "paper.toml")
    paper = (root / "paper.toml").read_text().replace('path = "data/paper-bpe8k"', 'path = ""')
    for name, sizes, decades in (("quick", 7, 1.5), ("paper", 10, 3.0)):
        s = load_sweep(root / f"{name}.toml") if name == "quick" else parse_sweep(paper)
        ns = sorted({count_params(tp.model)["non_embedding"] for tp in s.train_points})
        assert len(ns) >= sizes and math.log10(ns[-1] / ns[0]) >= decades
        assert {"fp32", "bf16", "int8", "w8a8"} <= set(s.precisions)
        if name == "quick":  # formats whose loss cost is visible (the precision law)
            assert {"int4", "fp8"} <= set(s.precisions)
        # an identifying design: >= 3 budgets on >= 5 sizes, >= 2 seeds on >= 2 sizes
        budgets, seeds = {}, {}
        for tp in s.train_points:
            budgets.setdefault(tp.size_target, set()).add(tp.budget)
            seeds.setdefault(tp.size_target, set()).add(tp.seed)
        assert sum(len(b) >= 3 for b in budgets.values()) >= 5, name
        assert sum(len(x) >= 2 for x in seeds.values()) >= 2, name
        assert s.notes == (), s.notes


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.slow
def test_checkpoint_round_trip_and_mismatch(tmp_path):
    import jax

    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=32)
    p = model.init_params(cfg, jax.random.key(3))
    path = checkpoint.save(tmp_path / "c.npz", p, {"a": 1})
    q, meta = checkpoint.load(path, cfg)
    assert meta == {"a": 1}
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(checkpoint.CheckpointError, match="leaf"):
        checkpoint.load(path, ModelConfig(d_model=16, n_layers=3, n_heads=2, max_seq_len=32))
    assert not list(tmp_path.glob(".*tmp"))


# ----------------------------------------------------------------------------- records


@pytest.mark.slow
@pytest.mark.xdist_group("done")  # one worker builds the module fixture
def test_sweep_writes_one_complete_record_per_point(done, corpus):
    s, r, out = done
    assert (r.written, r.trained, r.failed) == (4, 2, [])
    df = results.load_results(out)
    assert len(df) == 4
    assert set(zip(df.size_target_params_non_embedding, df.inference_precision)) == {
        (2e3, "fp32"),
        (2e3, "int8"),
        (8e3, "fp32"),
        (8e3, "int8"),
    }
    for row in df.itertuples():
        d, L = row.d_model, row.n_layers
        assert row.params_non_embedding == L * (12 * d * d + 2 * d) + d  # analytic count
        assert row.params_total == row.params_non_embedding + 256 * d
        assert row.train_tokens == row.train_steps * 4 * 32 and row.train_tokens >= 8192
        assert row.train_flops_6nd == 6 * row.params_non_embedding * row.train_tokens
        assert row.train_flops > row.train_flops_6nd  # includes embedding/head and attention
        assert 0 < row.eval_loss_nats < math.log(256)  # better than a uniform guess over bytes
        assert row.eval_bits_per_byte == pytest.approx(row.eval_loss_nats / math.log(2))
        assert row.eval_tokens == 512 and row.eval_loss_se_nats > 0
        assert (
            row.decode_ms_per_token_q1
            <= row.decode_ms_per_token_median
            <= row.decode_ms_per_token_q3
        )
        assert row.latency_repeats == 2 and row.latency_batch == 1 and row.gen_tokens == 4
        assert row.kv_cache_bytes == 2 * L * 12 * d * 4  # K and V, 12 positions, fp32
        assert len(row.config_hash) == 64 and row.jax_version and row.device_kind
    fp = df[df.inference_precision == "fp32"].set_index("params_non_embedding")
    i8 = df[df.inference_precision == "int8"].set_index("params_non_embedding")
    assert (i8.param_bytes < fp.param_bytes).all()
    assert (fp.delta_loss_vs_fp32_nats == 0).all()
    # the fp32-inference loss of the checkpoint, recomputed independently of the sweep
    tp = s.train_points[0]
    params, meta = checkpoint.load(next((out / "checkpoints").glob("N2000-*.npz")), tp.model)
    from jscale import data

    ev = evaluate.evaluate(params, tp.model, data.eval_batches(corpus.test, 32, 512))
    assert fp.loc[
        tp.model.n_layers * (12 * tp.model.d_model**2 + 2 * tp.model.d_model) + tp.model.d_model,
        "eval_loss_nats",
    ] == pytest.approx(ev["eval_loss_nats"], rel=1e-6)
    assert (out / "sweep.log").read_text().count("trained in") == 2
    # per-document losses beside every record: their sums give the record's loss back, and the
    # documents are the held-out split's own (the separators before each window)
    docs = results.load_document_losses(out)
    assert set(docs.point_id) == set(df.point_id)
    ids = data.eval_documents(corpus.test, 32, 512)
    for pid, g in docs.groupby("point_id"):
        rec = df.set_index("point_id").loc[pid]
        assert g.windows.sum() == 512 // 32 and list(g.windows) == list(
            np.bincount(ids)[g.document]
        )
        assert g.loss_sum_nats.sum() / g.windows.sum() == pytest.approx(
            rec.eval_loss_nats, rel=1e-12
        )


@pytest.mark.slow
@pytest.mark.xdist_group("done")  # one worker builds the module fixture
def test_rerun_skips_everything_and_new_precisions_never_retrain(done, tmp_path, monkeypatch):
    out = copy_of(done, tmp_path)
    before = {p.name: p.read_text() for p in (out / "records").glob("*.json")}
    _forbid_training(monkeypatch)
    r = sweep.run_sweep(tiny(out), progress=False, echo=False)
    assert (r.written, r.skipped) == (0, 4)
    r = sweep.run_sweep(tiny(out, ("fp32", "int8", "w8a8")), progress=False, echo=False)
    assert (r.written, r.skipped, r.trained, r.loaded) == (2, 4, 0, 2)
    after = {p.name: p.read_text() for p in (out / "records").glob("*.json")}
    assert len(after) == 6 and all(
        after[k] == v for k, v in before.items()
    )  # old records untouched
    # force: re-measured from the checkpoints, still never retrained, still one record per point
    r = sweep.run_sweep(tiny(out, ("fp32", "int8", "w8a8")), force=True, progress=False, echo=False)
    assert (r.written, r.trained, r.loaded) == (6, 0, 2)
    assert len(results.load_results(out)) == 6


@pytest.mark.slow
@pytest.mark.xdist_group("done")  # one worker builds the module fixture
def test_changed_config_is_stale_until_forced(done, tmp_path):
    out = copy_of(done, tmp_path)
    text = TINY.format(precisions='["fp32", "int8"]', lr=0.003)
    decayed = parse_sweep(text.replace("[train]", "[train]\nweight_decay = 0.05"), out_dir=str(out))
    with pytest.raises(ConfigError, match="--force"):
        sweep.run_sweep(decayed, progress=False, echo=False)
    assert len(results.load_results(out)) == 4  # nothing touched
    r = sweep.run_sweep(decayed, force=True, progress=False, echo=False)
    assert (r.written, r.trained) == (4, 2)  # the training config changed: checkpoints do not apply
    # another lr is another point of the lr axis, not a stale one: both are kept, and the
    # directory's results are the config that ran last (manifest.json); all_configs: both
    r = sweep.run_sweep(tiny(out, lr=1e-3), progress=False, echo=False)
    assert (r.written, r.trained) == (4, 2)
    assert sorted(results.load_results(out).lr_peak.unique()) == [1e-3]
    df = results.load_results(out, all_configs=True)
    assert len(df) == 8 and sorted(df.lr_peak.unique()) == [1e-3, 3e-3]


@pytest.mark.slow
@pytest.mark.xdist_group("done")  # one worker builds the module fixture
def test_a_diverged_model_fails_alone_and_is_retried(done, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = train.Trainer.advance

    def flaky(self, *a, **k):
        if self.cfg.d_model == done[0].train_points[1].model.d_model:
            raise train.TrainingDiverged("training loss is nan at optimizer step 3 of 16")
        return real(self, *a, **k)

    monkeypatch.setattr(train.Trainer, "advance", flaky)
    r = sweep.run_sweep(tiny(out), progress=False, echo=False)
    assert r.written == 2 and len(r.failed) == 1 and "step 3" in r.failed[0]
    monkeypatch.setattr(train.Trainer, "advance", real)
    r = sweep.run_sweep(tiny(out), progress=False, echo=False)
    assert (r.written, r.skipped, r.trained) == (2, 2, 1)
    assert len(results.load_results(out)) == 4


def test_results_store_is_atomic_and_json_safe(tmp_path):
    with pytest.raises(results.ResultsError, match="no results"):
        results.load_results(tmp_path)
    results.write_record(
        tmp_path, "p1", {"x_ms": np.float32(1.5), "bad": float("nan"), "n": np.int64(3)}
    )
    (tmp_path / "records" / ".p2.json.123.tmp").write_text(
        '{"point_id": "p2", "x_ms": '
    )  # a torn write
    df = results.load_results(tmp_path, check=False)  # not a sweep record: the store only
    assert len(df) == 1 and df.x_ms[0] == 1.5 and df.n[0] == 3 and df.bad.isna().all()


# ----------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_gives_exactly_one_record_per_point(tmp_path, cache_dir):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('out_dir = "out"\n' + TINY.format(precisions='["fp32", "int8"]', lr=0.003))
    env = {**os.environ, "JSCALE_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "jscale", "sweep", str(cfg), "--quiet"]
    p = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    records = tmp_path / "out" / "records"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and len(list(records.glob("*.json"))) < 1:
        time.sleep(0.05)
    assert p.poll() is None, p.stdout.read().decode()[-2000:]  # still mid-sweep
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_before = len(list(records.glob("*.json")))
    assert 1 <= n_before < 4
    q = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert q.returncode == 0, q.stderr[-2000:]
    files = sorted(p.stem for p in records.glob("*.json"))
    assert files == sorted(
        f"N{n}-D8192-seed0-lr0.003-fp32-{i}" for n in (2000, 8000) for i in ("fp32", "int8")
    )
    df = results.load_results(tmp_path / "out")
    assert len(df) == 4 and df.point_id.is_unique and df.eval_loss_nats.notna().all()
    assert f"{n_before} record(s) done, {4 - n_before} to run" in q.stderr  # only the rest was run
    assert (tmp_path / "out" / "results.csv").exists()


# ----------------------------------------------------------------------------- workers


@pytest.mark.slow
def test_two_workers_share_a_sweep_with_exactly_one_record_per_point(tmp_path, cache_dir):
    cfg = tmp_path / "tiny.toml"
    text = TINY.format(precisions='["fp32", "int8"]', lr=0.003)  # the share, not latency, is tested
    cfg.write_text('out_dir = "out"\n' + text.replace("[latency]", "[latency]\nenabled = false"))
    env = {**os.environ, "JSCALE_CACHE_DIR": str(cache_dir)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jscale", "sweep", str(cfg), "--quiet", "--worker", w],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in ("1/2", "2/2", "1/2")  # the third is given the first's share by mistake
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-1500:] for o in outs]
    assert all("worker" in o[1] for o in outs)
    # each model trained exactly once: the duplicate found its group locked (or its records
    # written by the time it got the lock) and trained nothing
    log = (tmp_path / "out" / "sweep.log").read_text()
    assert log.count("trained in") == 2, log
    df = results.load_results(tmp_path / "out")
    assert sorted(df.point_id) == sorted(
        f"N{n}-D8192-seed0-lr0.003-fp32-{i}" for n in (2000, 8000) for i in ("fp32", "int8")
    )
    assert df.hostname.nunique() == 1 and df.params_non_embedding.nunique() == 2
