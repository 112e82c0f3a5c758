"""Fault injection on a sweep's results directory (issue 17): one writer per directory, views
that cannot go stale, records of other configs kept apart, corrupt records called corrupt,
stale temporary files removed, and inputs bounded before any compute."""

import json
import os
import re
import shutil

import pandas as pd
import pytest

from jscale import lock, results, sweep
from jscale.config import ConfigError
from jscale.sweep_config import parse_sweep

ONE = """
name = "faults"
seeds = [0]
precisions = ["fp32"]
[sizes]
params_non_embedding = [2e3, 8e3]
[tokens]
fixed = 2048
[train]
batch_size = 4
seq_len = 32
lr = {lr}
eval_tokens = 256
steps_per_call = 4
[latency]
enabled = false
"""


def cfg(out, lr=3e-3, text=None):
    return parse_sweep(text or ONE.format(lr=lr), out_dir=str(out))


@pytest.fixture(scope="module")
def done(tmp_path_factory, corpus):
    """A finished two-model sweep (fp32 only, no latency)."""
    out = tmp_path_factory.mktemp("faults") / "out"
    r = sweep.run_sweep(cfg(out), progress=False, echo=False)
    assert r.written == 2
    return out


@pytest.fixture
def out(done, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(done, dst)
    return dst


def _forbid_training(monkeypatch):
    from jscale import train

    def boom(*a, **k):
        raise AssertionError("trained a model that needed no training")

    monkeypatch.setattr(train.Trainer, "advance", boom)


# ----------------------------------------------------------------------------- one writer


def test_a_second_plain_sweep_on_a_held_directory_stops_naming_the_holder(out):
    before = {p.name: p.read_text() for p in (out / "records").glob("*.json")}
    with lock.hold_dir(out, shared=False, identity="x"):
        with pytest.raises(lock.BusyError, match=f"pid {os.getpid()}") as e:
            sweep.run_sweep(cfg(out, lr=1e-3), progress=False, echo=False)
    assert "another out_dir" in str(e.value)
    after = {p.name: p.read_text() for p in (out / "records").glob("*.json")}
    assert after == before  # nothing written, nothing overwritten
    # released with the holder: the same run now goes ahead
    r = sweep.run_sweep(cfg(out, lr=1e-3), progress=False, echo=False)
    assert r.written == 2


def test_workers_of_another_config_and_plain_runs_beside_workers_are_refused(out):
    with lock.hold_dir(out, shared=True, identity="another config"):
        with pytest.raises(lock.BusyError, match="different sweep config"):
            sweep.run_sweep(cfg(out, lr=1e-3), worker=(0, 2), progress=False, echo=False)
        with pytest.raises(lock.BusyError, match="in use by another jscale sweep"):
            sweep.run_sweep(cfg(out, lr=1e-3), progress=False, echo=False)


def test_a_group_held_by_another_process_is_skipped_not_trained_twice(out, monkeypatch):
    s = cfg(out, lr=1e-3)
    first = s.groups()[0][0]
    with lock.try_group(out, f"group-{sweep._name(first)}") as mine:
        assert mine
        r = sweep.run_sweep(s, progress=False, echo=False)
    assert (r.written, r.trained) == (1, 1)  # only the group nobody held
    assert "held by another process, skipped" in (out / "sweep.log").read_text()
    r = sweep.run_sweep(s, progress=False, echo=False)  # released: the rest, once
    assert (r.written, r.trained, r.skipped) == (1, 1, 1)


def test_records_written_by_another_process_meanwhile_are_not_redone(out, monkeypatch):
    """The plan says "to do"; by the time this process holds the group another has written the
    record (same config): it is counted done, and nothing is trained."""
    s = cfg(out)
    for f in (out / "records").glob("*.json"):  # make the plan see nothing done ...
        f.rename(f.with_suffix(".bak"))
    real = sweep._still_to_do

    def meanwhile(run, points, todo):  # ... and "another process" finish them before the lock
        for f in (out / "records").glob("*.bak"):
            f.rename(f.with_suffix(".json"))
            os.utime(f.with_suffix(".json"))
        return real(run, points, todo)

    monkeypatch.setattr(sweep, "_still_to_do", meanwhile)
    _forbid_training(monkeypatch)
    r = sweep.run_sweep(s, progress=False, echo=False)
    assert (r.written, r.trained, r.skipped) == (0, 0, 2)


# ----------------------------------------------------------------------------- views and configs


def test_results_csv_is_rebuilt_at_the_end_of_every_run(out, monkeypatch):
    csv = out / "results.csv"
    assert len(pd.read_csv(csv)) == 2
    csv.write_text(csv.read_text()[:200])  # truncated by a kill mid-export
    _forbid_training(monkeypatch)
    r = sweep.run_sweep(cfg(out), progress=False, echo=False)  # nothing to do ...
    assert r.written == 0
    df = pd.read_csv(csv)  # ... and the view is whole again
    assert len(df) == 2 and sorted(df.point_id) == sorted(
        p.stem for p in (out / "records").glob("*.json")
    )


def test_records_of_another_config_are_left_out_of_fits_and_named(out):
    # a foreign record: another config's hash, another loss (x1.4)
    src = next((out / "records").glob("*.json"))
    rec = json.loads(src.read_text())
    rec.update(point_id="N4000-D2048-seed7-lr0.003-fp32-fp32", config_hash="0" * 64)
    rec["eval_loss_nats"] *= 1.4
    results.write_record(out, rec["point_id"], rec)
    notes = []
    df = results.load_results(out, log=notes.append)
    assert len(df) == 2 and rec["point_id"] not in set(df.point_id)
    assert len(notes) == 1 and "1 record(s)" in notes[0] and rec["point_id"] in notes[0]
    assert len(results.load_results(out, all_configs=True)) == 3
    # a later run of another config: its records are the directory's results, the old kept
    r = sweep.run_sweep(cfg(out, lr=1e-3), progress=False, echo=False)
    assert r.written == 2
    df = results.load_results(out)
    assert sorted(df.lr_peak.unique()) == [1e-3]
    assert len(results.load_results(out, all_configs=True)) == 5
    assert set(pd.read_csv(out / "results.csv").point_id) == set(df.point_id)


def test_a_table_mixing_sweeps_is_refused_unless_asked(out, tmp_path):
    df = results.load_results(out)
    mixed = pd.concat([df, df.assign(sweep_name="other")])
    path = tmp_path / "mixed.csv"
    mixed.to_csv(path, index=False)
    with pytest.raises(results.ResultsError, match="rows of 2 sweeps"):
        results.load_results(path)
    assert len(results.load_results(path, all_configs=True)) == 4


@pytest.mark.parametrize(
    "body, what", [("[]", "holds list"), ('{"point_id": "x", ', "corrupt"), ("", "corrupt")]
)
def test_a_corrupt_record_is_called_corrupt_and_redone(out, monkeypatch, body, what):
    victim = sorted((out / "records").glob("*.json"))[0]
    victim.write_text(body)
    with pytest.raises(results.ResultsError, match=what) as e:
        results.load_results(out)
    assert victim.name in str(e.value) and "corrupt" in str(e.value)
    _forbid_training(monkeypatch)  # redone from its checkpoint, not called stale
    r = sweep.run_sweep(cfg(out), progress=False, echo=False)
    assert (r.written, r.trained, r.loaded) == (1, 0, 1)
    assert "1 corrupt record(s)" in (out / "sweep.log").read_text()
    assert len(results.load_results(out)) == 2


def test_stale_temporary_files_are_removed_at_start(out, monkeypatch):
    dead = 2**22 + 12345  # above pid_max on Linux: never a live process
    junk = [
        out / "checkpoints" / f".x.npz.{dead}.tmp",
        out / "records" / f".y.json.{dead}.tmp",
        out / f".results.csv.{dead}.tmp",
    ]
    mine = out / "records" / f".z.json.{os.getpid()}.tmp"  # a live writer's: kept
    for f in [*junk, mine]:
        f.write_bytes(b"\0" * 100)
    _forbid_training(monkeypatch)
    sweep.run_sweep(cfg(out), progress=False, echo=False)
    assert not any(f.exists() for f in junk) and mine.exists()
    assert "removed 3 temporary file(s)" in (out / "sweep.log").read_text()


# ----------------------------------------------------------------------------- bounded inputs


@pytest.mark.parametrize(
    "edit, key, what",
    [
        (("seeds = [0]", "seeds = [1e20]"), "seeds", "2^31"),
        (("seeds = [0]", "seeds = [2147483648]"), "seeds", "2^31"),
        (('name = "faults"', 'name = "../../x"'), "name", "letters, digits"),
        (('name = "faults"', 'name = ".hidden"'), "name", "letters, digits"),
        (("[2e3, 8e3]", "[1e30]"), "sizes.params_non_embedding", "<= 1e+13"),
    ],
)
def test_unbounded_inputs_are_refused_at_load(edit, key, what):
    text = ONE.format(lr=3e-3).replace(*edit)
    with pytest.raises(ConfigError, match=re.escape(what)) as e:
        parse_sweep(text, out_dir="unused")
    assert key in str(e.value)


@pytest.mark.parametrize(
    "edit, what",
    [
        (("[2e3, 8e3]", "[1e12]"), r"training the model of 1e\+12"),
        (
            ("eval_tokens = 256", "eval_tokens = 256\neval_batch_size = 100000000"),
            "eval_batch_size",
        ),
    ],
)
def test_a_sweep_that_cannot_fit_in_memory_stops_before_any_compute(
    tmp_path, monkeypatch, edit, what
):
    from jscale import data

    s = parse_sweep(ONE.format(lr=3e-3).replace(*edit), out_dir=str(tmp_path / "out"))
    monkeypatch.setattr(data, "load_corpus", lambda *a, **k: pytest.fail("loaded the corpus"))
    with pytest.raises(ConfigError, match=what) as e:
        sweep.run_sweep(s, progress=False, echo=False)
    assert "GiB" in str(e.value) and "sizes (" in str(e.value)
    assert not (tmp_path / "out" / "records").exists()


def test_memory_estimates_count_what_a_step_must_hold():
    """Lower bounds anyone can count: AdamW training holds params, grads and two moments in
    fp32 (16 B per parameter) and the logits of the batch; evaluation the logits."""
    from jscale import memory
    from jscale.config import ModelConfig, TrainConfig, count_params

    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=2)
    tc = TrainConfig(batch_size=8, seq_len=64, steps=1, eval_batch_size=100)
    n = count_params(cfg)["total"]
    logits = 4 * 64 * 256
    assert memory.train_bytes(cfg, tc) >= 16 * n + 8 * logits
    assert memory.eval_bytes(cfg, tc) >= 4 * n + 100 * logits
    # and they grow as they must: linearly in the batch, quadratically in the sequence (scores)
    big = TrainConfig(batch_size=16, seq_len=64, steps=1)
    assert memory.train_bytes(cfg, big) - 16 * n == pytest.approx(
        2 * (memory.train_bytes(cfg, tc) - 16 * n)
    )


def test_out_dir_naming_a_file_is_refused_before_the_corpus_loads(tmp_path, monkeypatch):
    f = tmp_path / "taken"
    f.write_text("x")
    from jscale import data

    monkeypatch.setattr(data, "load_corpus", lambda *a, **k: pytest.fail("loaded the corpus"))
    with pytest.raises(ConfigError, match="out_dir: .* is a file"):
        parse_sweep(ONE.format(lr=3e-3), out_dir=str(f))
