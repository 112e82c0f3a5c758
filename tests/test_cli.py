"""The jscale command: bad input is one line naming the flag or field, exit 2, before any
training; a tiny end-to-end run prints its held-out loss and the precision table."""

import re
import subprocess
import sys

import pytest

from jscale.cli import main


@pytest.mark.parametrize(
    "argv,needle",
    [
        (
            ["train", "--d-model", "30", "--n-heads", "4"],
            "d_model (30) must be divisible by n_heads (4)",
        ),
        (
            ["train", "--eval-tokens", "10", "--steps", "1"],
            "eval_tokens (10) must be at least seq_len",
        ),
        (["train", "--n-layers", "7"], "--n-layers and --n-heads need --d-model"),
        (["train", "--size", "1e6", "--d-model", "64"], "not both"),
        (["train", "--steps", "3", "--tokens", "1e9"], "--steps or --tokens"),
        (["train", "--corpus", "/nonexistent/corpus"], "/nonexistent/corpus"),
        (
            ["train", "--precisions", "fp32,int2"],
            "--precisions: unknown precision 'int2'; valid precisions are: fp32, bf16, int8, w8a8",
        ),
        (["bench", "latency", "--precisions", "fp16"], "--precisions: unknown precision 'fp16'"),
        (["train", "--lr", "0"], "TrainConfig.lr"),
        (["ladder", "--lo", "1e9", "--hi", "1e4"], "lo <= hi"),
    ],
)
def test_bad_input_is_one_clear_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jscale: error:") and needle in err[0], err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--tokens", "nan"],
        ["train", "--tokens", "0.5"],
        ["ladder", "--lo", "0"],
        ["train", "--seq-len", "abc"],
    ],
)
def test_unparseable_numbers_are_rejected_by_argparse(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "argument" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_train_end_to_end(capsys):
    rc = main(
        [
            "train",
            "--size",
            "1e4",
            "--steps",
            "6",
            "--batch-size",
            "4",
            "--seq-len",
            "64",
            "--eval-tokens",
            "2048",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "12,384 non-embedding" in out  # the ladder model for 1e4 (d_model 32, 1 layer)
    assert "held-out loss" in out and "bits/byte" in out
    for name in ("fp32", "bf16", "int8", "w8a8"):
        assert f"| {name} |" in out


def test_python_dash_m_runs():
    r = subprocess.run(
        [sys.executable, "-m", "jscale", "ladder", "--lo", "1e4", "--hi", "1e5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0
    assert "| 1e+04 | 12,384 |" in r.stdout and "| 1e+05 | 98,624 |" in r.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["sweep", "x.toml", "--worker", "0/2"],
        ["train", "--compute", "fp16"],
        ["fit"],
        ["figures", "somewhere"],
    ],
)
def test_usage_errors_are_one_line_too(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "error:" in err[0] and "--help" in err[0], err


def test_retrain_needs_force(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "x.toml"), "--retrain"]) == 2
    assert "--retrain only applies with --force" in capsys.readouterr().err


def test_every_export_stays_what_it_is_after_submodules_load():
    import importlib

    import jscale

    before = {name: getattr(jscale, name) for name in jscale.__all__}
    for mod in (
        "train",
        "evaluate",
        "roofline",
        "latency",
        "formulation",
        "schema",
        "sweep",
        "analysis",
        "figures",
    ):
        importlib.import_module(f"jscale.{mod}")
    for name, obj in before.items():
        assert getattr(jscale, name) is obj, name  # a submodule import must not replace an export
        assert not isinstance(obj, type(jscale)), name


@pytest.mark.slow
def test_info_and_bench_latency_show_the_read_bandwidth_and_layouts(capsys):
    """`jscale info` reports both bandwidths; `jscale bench latency` runs each precision in its
    layout (auto) or the one asked for, and prints it per row."""
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "read bandwidth" in out and "read+write" in out
    from jscale import autotune
    from jscale.config import config_for_params

    auto = {p: autotune.choose(p, config_for_params(1e4)) for p in ("fp32", "bf16")}
    for flag, want in (
        (
            ["--kernel-layout", "in_out", "--min-rows", "2"],
            {"fp32": ("in_out", "2"), "bf16": ("in_out", "2")},
        ),
        ([], {p: (q.kernel_layout, str(q.min_rows)) for p, q in auto.items()}),
    ):
        assert (
            main(
                [
                    "bench",
                    "latency",
                    "--sizes",
                    "1e4",
                    "--precisions",
                    "fp32,bf16",
                    "--prompt",
                    "8",
                    "--gen",
                    "2",
                    "--repeats",
                    "1",
                    *flag,
                ]
            )
            == 0
        )
        rows = [r.split("|") for r in capsys.readouterr().out.splitlines() if r.startswith("| 1")]
        assert {r[2].strip(): (r[3].strip(), r[4].strip()) for r in rows} == want


def test_sweep_plan_lists_every_training_point_with_its_analytic_size(tmp_path, capsys):
    cfg = tmp_path / "plan.toml"
    cfg.write_text(
        'seeds = [0, 1]\nprecisions = ["fp32", "int8"]\n'
        "[sizes]\nparams_non_embedding = [2e3, 8e3]\n"
        "[tokens]\nfixed = 8192\n[train]\nbatch_size = 4\nseq_len = 32\neval_tokens = 512\n"
    )
    assert main(["sweep", str(cfg), "--plan", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "0 record(s) done, 8 to run, 0 stale" in out
    rows = [
        r.split("|")[1:-1] for r in out.splitlines() if r.startswith("| ") and "target" not in r
    ]
    assert len(rows) == 4 and sorted(int(r[4]) for r in rows) == [0, 0, 1, 1]
    for r in rows:
        d, layers = (int(v) for v in r[2].split(" x "))
        n = layers * (12 * d * d + 2 * d) + d
        assert int(r[1].replace(",", "")) == n  # the analytic N
        assert int(r[3]) == max(1, d // 64)  # heads: 64 wide, one below 64
        assert int(r[6].replace(",", "")) == 8192 and float(r[7]) == pytest.approx(8192 / n, 1e-2)
        assert r[10].strip() == "cosine" and r[13].strip() == "fp32, int8"
        assert 0 < float(r[12]) < 0.01  # peak GiB (jscale.memory's estimate) of a tiny model
    assert "design: one token budget for every size" in out
    assert not (tmp_path / "out").exists()  # a plan writes nothing
    # WSD budgets: a branch adds its trunk segment and its cooldown, not a whole run
    cfg.write_text(
        cfg.read_text()
        .replace("fixed = 8192", "fixed = [4096, 8192]")
        .replace("[train]", '[train]\nschedule = "wsd"\nsteps_per_call = 4')
    )
    assert main(["sweep", str(cfg), "--plan", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("training:"))
    total, separate = (float(v) for v in re.findall(r"([\d.e+-]+) TFLOP", line))
    # 4096 tokens = 32 steps (cooldown 8: 24..32), 8192 = 64 (cooldown 12: 52..64); trunk 0..52
    assert total / separate == pytest.approx((52 + 8 + 12) / (32 + 64), rel=1e-3)
