"""``jscale sweep --train-jobs``: training in processes side by side, then one measuring run.

In its own module so that pytest-xdist (``--dist loadfile``) can run it beside the other sweep
tests rather than after them."""

import os

import pytest
from test_sweep import TINY

from jscale import cli, results, train
from jscale.config import ConfigError


@pytest.mark.slow
def test_train_jobs_train_each_model_once_then_one_run_measures(tmp_path, monkeypatch):
    """--train-jobs 2: two --train-only processes train the two models (each exactly once, on
    its share of the CPUs); this process then loads both checkpoints, trains nothing (training
    here would raise) and writes every record."""
    cfg = tmp_path / "tiny.toml"
    text = TINY.format(precisions='["fp32", "int8"]', lr=0.003)
    cfg.write_text(text.replace("[latency]", "[latency]\nenabled = false"))
    out = tmp_path / "out"

    def boom(*a, **k):
        raise AssertionError("the measuring run trained a model the jobs had trained")

    monkeypatch.setattr(train.Trainer, "advance", boom)
    assert cli.main(["sweep", str(cfg), "--out", str(out), "--quiet", "--train-jobs", "2"]) == 0
    log = (out / "sweep.log").read_text()
    assert log.count("trained in") == 2, log  # one per model, by the jobs
    assert log.count("training done:") == 2 and "0 model(s) trained, 2 loaded" in log, log
    df = results.load_results(out)
    assert len(df) == 4 and df.eval_loss_nats.notna().all()
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2:
        cpus = sorted(os.sched_getaffinity(0))  # job j runs on CPUs j, j + 2, ...
        assert set(df.train_cpus) <= {len(cpus[0::2]), len(cpus[1::2])}, df.train_cpus


def test_train_jobs_refuse_a_worker_share_a_mesh_and_a_bad_cpu_share(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(precisions='["fp32"]', lr=0.003))
    assert cli.main(["sweep", str(cfg), "--train-jobs", "2", "--worker", "1/2"]) == 2
    assert "--train-jobs" in capsys.readouterr().err
    mesh = cfg.read_text() + "\n[mesh]\ndata = 1\n"
    cfg.write_text(mesh)
    assert cli.main(["sweep", str(cfg), "--train-jobs", "2"]) == 2
    assert "not for a [mesh] sweep" in capsys.readouterr().err
    monkeypatch.setenv(cli.CPU_SHARE_ENV, "2/2")
    with pytest.raises(ConfigError, match="JSCALE_CPU_SHARE must be J/N"):
        cli._pin_cpus()
