"""The results schema is the one owner of column names: docs, writers and readers follow it."""

import ast
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from jscale import results, schema

ROOT = Path(__file__).resolve().parent.parent


def test_docs_schema_page_is_generated_from_the_code():
    page = (ROOT / "docs" / "schema.md").read_text()
    assert page == schema.markdown(), (
        "docs/schema.md is stale: run `python -m jscale.schema > docs/schema.md`"
    )


def test_every_column_has_a_unit_type_meaning_and_writer():
    for c in schema.COLUMNS:
        assert c.unit and c.meaning and c.dtype in ("str", "int", "float", "bool"), c
        assert c.source in ("sweep", "config", "train", "evaluate", "latency", "provenance"), c
        assert c.group in ("core", "latency", "optional"), c
    # a unit in the name: every float measured in seconds, bytes or nats says so
    for c in schema.COLUMNS:
        if c.unit in (
            "s",
            "ms",
            "bytes",
            "nats/token",
            "bytes/s",
            "FLOP/s",
            "tokens/s",
            "ms/token",
        ):
            suffix = {
                "s": "_s",
                "ms": "_ms",
                "bytes": "_bytes",
                "nats/token": "_nats",
                "bytes/s": "_per_s",
                "FLOP/s": "_per_s",
                "tokens/s": "_per_s",
                "ms/token": "_ms_per_token",
            }[c.unit]
            assert suffix in c.name, (c.name, c.unit)


def test_part_refuses_unknown_and_names_missing_columns():
    with pytest.raises(schema.SchemaError, match="not in jscale.schema: eval_loss_bits"):
        schema.part("evaluate", {"eval_loss_bits": 1.0})
    full = {name: 0 for name in schema.columns("train")}
    assert schema.part("train", full) == full
    del full["train_steps"]
    with pytest.raises(schema.SchemaError, match="missing columns: train_steps"):
        schema.part("train", full)
    with pytest.raises(schema.SchemaError, match="unknown schema source"):
        schema.part("model", {})


def test_check_columns_names_unknown_and_missing_and_latency_all_or_none():
    core = schema.columns(group="core")
    schema.check_columns(core)  # no latency at all: fine
    schema.check_columns(core + schema.columns(group="latency"))
    with pytest.raises(schema.SchemaError, match="unknown columns: batch"):
        schema.check_columns(core + ["batch"])
    with pytest.raises(schema.SchemaError, match="missing columns: eval_loss_nats"):
        schema.check_columns([c for c in core if c != "eval_loss_nats"])
    with pytest.raises(schema.SchemaError, match="missing columns: .*decode_efficiency"):
        schema.check_columns(
            core + [c for c in schema.columns(group="latency") if c != "decode_efficiency"]
        )


def test_load_results_checks_a_table_and_can_skip_the_check(tmp_path):
    path = tmp_path / "published.csv"
    pd.DataFrame({"N": [1e6, 1e7], "loss": [3.0, 2.8]}).to_csv(path, index=False)
    with pytest.raises(
        results.ResultsError, match="unknown columns: N, loss; missing columns: point_id"
    ):
        results.load_results(path)
    assert list(results.load_results(path, check=False).columns) == ["N", "loss"]


def test_committed_results_table_matches_the_schema():
    df = results.load_results(ROOT / "figures" / "results.csv")
    assert len(df) > 0


def _imports(path: Path) -> set[str]:
    """The jscale modules a source file imports (at any level of the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jscale"):
            out |= (
                {node.module}
                if node.module != "jscale"
                else {f"jscale.{a.name}" for a in node.names}
            )
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("jscale")}
    return {m for m in out if m not in ("jscale", "jscale.__version__")}


def test_imports_run_one_way_without_cycles():
    """The layering of docs/internals.md: each module imports only modules of lower layers."""
    layer = {
        "schema": 0,
        "runtime": 0,
        "config": 0,
        "memory": 1,
        "lock": 1,
        "results": 1,
        "laws": 0,
        "intervals": 1,
        "axes": 1,
        "degradation": 1,
        "analysis": 2,
        "figures": 3,
        "precision": 1,
        "formulation": 2,
        "ladder": 4,
        "generate": 4,
        "autotune": 5,
        "data": 1,
        "tokenize": 2,
        "roofline": 1,
        "sharding": 1,
        "model": 3,
        "checkpoint": 4,
        "evaluate": 4,
        "train": 5,
        "latency": 6,
        "sweep_config": 5,
        "sweep": 7,
        "cli": 8,
    }
    files = {
        p.stem: p for p in (ROOT / "jscale").glob("*.py") if p.stem not in ("__init__", "__main__")
    }
    assert set(files) == set(layer), "a new module needs its layer here and in docs/internals.md"
    for name, path in files.items():
        for dep in _imports(path):
            dep = dep.removeprefix("jscale.")
            assert layer[dep] < layer[name], (
                f"jscale.{name} (layer {layer[name]}) imports jscale.{dep} (layer {layer[dep]})"
            )
    for light in (
        "schema",
        "results",
        "laws",
        "intervals",
        "axes",
        "degradation",
        "analysis",
        "figures",
    ):
        deps = {d.removeprefix("jscale.") for d in _imports(files[light])}
        assert not deps & {
            "model",
            "train",
            "evaluate",
            "latency",
            "precision",
            "formulation",
            "sweep",
        }, light


def test_analysis_and_figures_load_no_flax():
    code = (
        "import sys, jscale.analysis, jscale.figures, jscale.results; "
        "bad = [m for m in ('flax', 'jscale.model', 'jscale.train') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
