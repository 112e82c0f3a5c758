"""The token axis of a sweep: WSD trunks and cooldown branches end to end, resume, kill -9."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jscale import evaluate, results, sweep, train
from jscale.sweep_config import parse_sweep


def _forbid_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the sweep retrained a model it had a checkpoint for")

    monkeypatch.setattr(train.Trainer, "advance", boom)


# ----------------------------------------------------------------------------- WSD token axis

WSD = """
name = "tinywsd"
seeds = [0]
precisions = ["fp32", "int8"]
[sizes]
params_non_embedding = [2e3, 8e3]
[replicates]
seeds = [1]
sizes = [2e3]
[tokens]
fixed = {budgets}
[train]
batch_size = 4
seq_len = 32
lr = 3e-3
schedule = "wsd"
cooldown_frac = 0.25
eval_tokens = 512
steps_per_call = 4
[latency]
prompt_tokens = 8
gen_tokens = 4
repeats = 2
warmup = 1
"""


@pytest.fixture(scope="module")
def wsd_done(tmp_path_factory, corpus):
    """A finished tiny N x D x seed sweep: 2 sizes x 2 budgets (WSD branches), a second seed on
    the small size, 2 precisions."""
    out = tmp_path_factory.mktemp("wsd") / "out"
    s = parse_sweep(WSD.format(budgets="[4096, 12288]"), out_dir=str(out))
    r = sweep.run_sweep(s, progress=False, echo=False)
    return s, r, out


@pytest.mark.slow
@pytest.mark.xdist_group("wsd")
def test_wsd_sweep_records_every_axis_and_branches_equal_separate_runs(wsd_done, corpus):
    from jscale import data

    s, r, out = wsd_done
    assert (r.written, r.trained, len(r.failed)) == (12, 6, 0)
    df = results.load_results(out)
    assert len(df) == 12 and df.point_id.is_unique
    assert sorted(df.train_tokens_target.unique()) == [4096, 12288]
    assert df.groupby("size_target_params_non_embedding").seed.nunique().to_dict() == {
        2e3: 2,
        8e3: 1,
    }
    assert (df.schedule == "wsd").all() and df.compute_budget_flops.isna().all()
    # budgets round up to whole calls of 4 steps of 128 tokens; the cooldown is a quarter
    assert (df.train_tokens == df.train_steps * 128).all() and (df.train_steps % 4 == 0).all()
    assert (df.cooldown_tokens == 4 * np.round(0.25 * df.train_steps / 4) * 128).all()
    assert df.groupby("train_hash").warmup_tokens.nunique().eq(1).all()
    assert df.warmup_tokens.nunique() == 1  # the smallest budget's warm-up, shared
    np.testing.assert_allclose(df.epochs, df.train_tokens / len(corpus.train))
    # the model-selection loss: one value per model, not the test loss
    assert df.groupby("train_hash").select_loss_nats.nunique().eq(1).all()
    assert (df.select_loss_nats != df.eval_loss_nats).all()
    # latency: timed once per (size, precision), carried by the other budgets and seeds
    for _, g in df.groupby(["params_non_embedding", "inference_precision"]):
        assert (g.point_id == g.latency_from_point_id).sum() == 1
        assert g.decode_ms_per_token_median.nunique() == 1
    # a branch equals a separate WSD run to its budget (independent of the trunk machinery)
    tp = next(
        p for p in s.train_points if p.size_target == 2e3 and p.seed == 1 and p.budget == 4096
    )
    direct = train.train(tp.model, tp.train, corpus, progress=False, evaluate_heldout=False)
    ev = evaluate.evaluate(direct.params, tp.model, data.eval_batches(corpus.test, 32, 512))
    row = df[df.point_id == sweep.point_id(tp, "fp32")].iloc[0]
    assert row.eval_loss_nats == pytest.approx(ev["eval_loss_nats"], rel=1e-6)
    # the loss curves: one per model; a branch's curve is its trunk's up to the branch point
    curves = results.load_curves(out)
    assert curves.train_key.nunique() == 6
    for key, c in curves.groupby("train_key"):
        steps = int(df[df.point_id.str.startswith(key.rsplit("-", 1)[0])].train_steps.iloc[0])
        assert c.step.is_monotonic_increasing and c.step.iloc[-1] == steps
        assert list(c.phase.unique()) == ["trunk", "cooldown"]
        assert c.heldout_loss_nats.notna().all() and c.lr.iloc[-1] < c.lr.max()
    assert len(list((out / "checkpoints").glob("trunk-*.npz"))) == 6  # each branch point


@pytest.mark.slow
@pytest.mark.xdist_group("wsd")
def test_wsd_rerun_skips_and_a_new_budget_continues_the_trunk(wsd_done, tmp_path, monkeypatch):
    s, _, done_out = wsd_done
    out = tmp_path / "out"
    shutil.copytree(done_out, out)
    _forbid_training(monkeypatch)
    r = sweep.run_sweep(
        parse_sweep(WSD.format(budgets="[4096, 12288]"), out_dir=str(out)),
        progress=False,
        echo=False,
    )
    assert (r.written, r.skipped) == (0, 12)
    monkeypatch.undo()
    steps = []
    real = train.Trainer.advance

    def spy(self, stop, *a, **k):
        steps.append((self.step, stop))
        return real(self, stop, *a, **k)

    monkeypatch.setattr(train.Trainer, "advance", spy)
    bigger = parse_sweep(WSD.format(budgets="[4096, 12288, 16384]"), out_dir=str(out))
    r = sweep.run_sweep(bigger, progress=False, echo=False)
    assert (r.written, r.skipped, r.trained) == (6, 12, 3)
    # each new branch continues its trunk from the last saved branch point (72 steps), not 0
    assert sorted(steps) == [(72, 96), (72, 96), (72, 96), (96, 128), (96, 128), (96, 128)]


def _kill_when(log: Path, phrase: str, proc, delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` s after ``phrase`` appears in the part of ``log`` it writes."""
    offset = log.stat().st_size if log.exists() else 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and phrase in log.read_text()[offset:]:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_sigkill_during_a_trunk_and_a_branch_then_rerun_gives_the_same_losses(tmp_path, cache_dir):
    text = WSD.format(budgets="[16384, 65536]").replace("[latency]", "[latency]\nenabled = false")
    env = {**os.environ, "JSCALE_CACHE_DIR": str(cache_dir)}
    losses = {}
    for name, kills in (("straight", ()), ("killed", ("trunk 96 -> 384", "cooldown 384 -> 512"))):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'out_dir = "{name}"\n' + text)
        cmd = [sys.executable, "-m", "jscale", "sweep", str(cfg), "--quiet"]
        for phrase in kills:  # killed in the middle of the first trunk, then of a cooldown
            p = subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            assert _kill_when(tmp_path / name / "sweep.log", phrase, p, 0.3), phrase
        q = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert q.returncode == 0, q.stderr[-2000:]
        df = results.load_results(tmp_path / name)
        assert len(df) == 12 and df.point_id.is_unique
        losses[name] = df.set_index("point_id").eval_loss_nats.sort_index()
        assert not list((tmp_path / name / "checkpoints").glob(".*.tmp"))
    assert list(losses["killed"].index) == list(losses["straight"].index)
    np.testing.assert_array_equal(losses["killed"].values, losses["straight"].values)
