"""The results schema: every column a sweep record can hold, its unit, type, meaning and writer.

This module owns the column names.  Writers build their part of a record with ``part(source,
values)``, which refuses a key the schema does not list for that source (and names a missing
one), so a new number cannot reach a results file without a unit and a meaning.  Readers name
columns through the constants below (``N``, ``LOSS``, ...), and ``check_columns`` checks a whole
table (``jscale.results.load_results`` calls it).  ``docs/schema.md`` is generated from
``COLUMNS`` by ``markdown()`` (``python -m jscale.schema > docs/schema.md``); a test fails when the
two differ.

Groups: ``core`` columns are in every record; ``latency`` columns are there when the sweep
measured latency (``[latency] enabled``), all or none; ``optional`` columns may be absent or
null (e.g. XLA's memory analysis on backends that do not report it).

This module imports nothing: analysis, figures and users' notebooks can use it on any table.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping


class SchemaError(ValueError):
    """A record or table whose columns do not match the schema; the message names them."""


@dataclasses.dataclass(frozen=True)
class Column:
    """One results column.  unit: what one unit of the value is (``-`` for labels and pure
    numbers).  dtype: ``str``, ``int``, ``float`` or ``bool``.  meaning: what it is and how it
    was measured.  source: the part of jscale that fills it (``sweep``, ``config``, ``train``,
    ``evaluate``, ``latency``, ``provenance``).  group: ``core``, ``latency`` or ``optional``."""

    name: str
    unit: str
    dtype: str
    meaning: str
    source: str
    group: str = "core"


def _c(source, group, name, unit, dtype, meaning):
    return Column(name, unit, dtype, meaning, source, group)


_STAT = "over `latency_repeats` timed runs, each after `warmup` untimed ones"
_XLA = {
    "argument": "inputs",
    "output": "outputs",
    "temp": "temporaries",
    "generated_code": "compiled code",
}

COLUMNS: tuple[Column, ...] = (
    # ---- the point: written by jscale.sweep
    _c(
        "sweep",
        "core",
        "point_id",
        "-",
        "str",
        "`N<size target>-D<token budget>-seed<s>-lr<peak lr>-<train precision>-"
        "<inference precision>`: one record per point",
    ),
    _c("sweep", "core", "sweep_name", "-", "str", "the sweep config's `name`"),
    _c(
        "sweep",
        "core",
        "config_hash",
        "-",
        "str",
        "SHA-256 of everything that determines this record "
        "(training hash, precision, latency settings)",
    ),
    _c(
        "sweep",
        "core",
        "train_hash",
        "-",
        "str",
        "SHA-256 of everything that determines the trained params "
        "(model, training config, corpus content)",
    ),
    _c(
        "sweep",
        "core",
        "size_target_params_non_embedding",
        "params",
        "float",
        "the size the ladder aimed for (the achieved count is `params_non_embedding`)",
    ),
    _c(
        "sweep",
        "core",
        "seed",
        "-",
        "int",
        "the one integer all randomness of the run (init, batches) derives from",
    ),
    _c(
        "sweep",
        "core",
        "train_precision",
        "-",
        "str",
        "`fp32`, or `bf16` (mixed precision: fp32 master weights)",
    ),
    _c(
        "sweep",
        "core",
        "inference_precision",
        "-",
        "str",
        "the precision policy the params were converted to and evaluated/timed in "
        "(`jscale.precision`)",
    ),
    _c(
        "sweep",
        "core",
        "train_tokens_target",
        "tokens",
        "int",
        "the token budget the config gives this point (`[tokens]`); `train_tokens` is what was "
        "trained, rounded up to whole optimizer steps",
    ),
    _c(
        "sweep",
        "optional",
        "compute_budget_flops",
        "FLOPs",
        "float",
        "the IsoFLOP budget C this point belongs to (`[tokens] compute`: tokens = C / (6 N)); "
        "empty when the sweep has no compute budgets",
    ),
    _c(
        "sweep",
        "core",
        "schedule",
        "-",
        "str",
        "learning-rate schedule: `cosine` (one run per budget) or `wsd` (a constant-lr trunk "
        "shared by the budgets of a size, seed and lr; each budget is a cooldown branch from it)",
    ),
    _c("sweep", "core", "corpus", "-", "str", "the corpus path"),
    _c(
        "sweep",
        "optional",
        "tokenizer",
        "-",
        "str",
        "`bytes`, or the token files' tokenizer name (`tokens.json`; records since 2026-12-03)",
    ),
    _c(
        "sweep",
        "core",
        "corpus_digest",
        "-",
        "str",
        "content hash of the corpus tokens (train and held-out)",
    ),
    _c("sweep", "core", "val_percent", "%", "float", "share of the corpus held out (by file)"),
    _c("sweep", "core", "created_at", "UTC ISO 8601", "str", "when the record was written"),
    # ---- the model and its training configuration (jscale.config)
    _c("config", "core", "d_model", "channels", "int", "residual width"),
    _c("config", "core", "n_layers", "blocks", "int", "transformer blocks"),
    _c(
        "config",
        "core",
        "n_heads",
        "heads",
        "int",
        "attention heads (head width = d_model / n_heads)",
    ),
    _c("config", "core", "d_ff", "channels", "int", "MLP hidden width"),
    _c(
        "config",
        "core",
        "vocab_size",
        "tokens",
        "int",
        "vocabulary (256: bytes; a token corpus's `vocab_size`)",
    ),
    _c("config", "core", "max_seq_len", "tokens", "int", "longest sequence the model accepts"),
    _c(
        "config",
        "core",
        "tie_embeddings",
        "-",
        "bool",
        "the output head reuses the token embedding",
    ),
    _c(
        "config",
        "core",
        "params_total",
        "params",
        "int",
        "exact parameter count (`jscale.config.count_params`)",
    ),
    _c(
        "config",
        "core",
        "params_non_embedding",
        "params",
        "int",
        "parameters except the token embedding (and untied head): Kaplan's N",
    ),
    _c(
        "config",
        "core",
        "params_embedding",
        "params",
        "int",
        "token embedding (plus the untied head)",
    ),
    _c("config", "core", "batch_size", "sequences", "int", "training batch"),
    _c("config", "core", "seq_len", "tokens", "int", "training (and held-out) sequence length"),
    _c(
        "config",
        "core",
        "lr_peak",
        "-",
        "float",
        "peak AdamW learning rate, after the sweep's size rule",
    ),
    _c(
        "config",
        "core",
        "warmup_tokens",
        "tokens",
        "int",
        "tokens of linear lr warm-up from 0 (the same for every budget of a WSD trunk)",
    ),
    _c(
        "config",
        "core",
        "cooldown_tokens",
        "tokens",
        "int",
        "tokens of the WSD cooldown branch (lr decays to `lr_peak x min_lr_ratio`); "
        "0 for cosine, whose decay spans the whole run",
    ),
    # ---- training (jscale.train)
    _c(
        "train",
        "core",
        "train_tokens",
        "tokens",
        "int",
        "tokens trained on (the budget rounded up to whole steps)",
    ),
    _c("train", "core", "train_steps", "steps", "int", "optimizer steps"),
    _c(
        "train",
        "core",
        "train_flops",
        "FLOPs",
        "float",
        "analytic training FLOPs: 3 x forward matmul FLOPs per token "
        "(projections, head, attention) x tokens",
    ),
    _c(
        "train",
        "core",
        "train_flops_6nd",
        "FLOPs",
        "float",
        "`6 x params_non_embedding x train_tokens` (the Kaplan/Chinchilla convention)",
    ),
    _c(
        "train",
        "core",
        "train_wall_s",
        "s",
        "float",
        "wall time of the training loop, compilation excluded",
    ),
    _c(
        "train",
        "core",
        "train_compile_s",
        "s",
        "float",
        "ahead-of-time compile time of the train step",
    ),
    _c(
        "train",
        "optional",
        "train_cpus",
        "CPUs",
        "int",
        "host CPUs the training process could run on (`jscale sweep --train-jobs` pins each job "
        "to its share; XLA:CPU's float results depend on it, by about 1e-3 nats in the final "
        "loss; a WSD branch reports its cooldown's)",
    ),
    _c("train", "core", "train_tokens_per_s", "tokens/s", "float", "`train_tokens / train_wall_s`"),
    _c(
        "train",
        "core",
        "train_loss_final_nats",
        "nats/token",
        "float",
        "mean training loss over the last 5% of steps (training batches, not held out)",
    ),
    _c(
        "train",
        "core",
        "epochs",
        "epochs",
        "float",
        "`train_tokens` / tokens of the corpus's training split: above 1 the run repeats data",
    ),
    # ---- held-out evaluation in this precision (jscale.evaluate)
    _c(
        "evaluate",
        "core",
        "eval_tokens",
        "tokens",
        "int",
        "predicted tokens in the fixed held-out set (the same windows for every model)",
    ),
    _c(
        "evaluate",
        "core",
        "eval_loss_nats",
        "nats/token",
        "float",
        "held-out next-token loss, run in `inference_precision`",
    ),
    _c(
        "evaluate",
        "core",
        "eval_loss_se_nats",
        "nats/token",
        "float",
        "standard error of `eval_loss_nats` over held-out sequences "
        "(sampling noise of the held-out set only)",
    ),
    _c(
        "evaluate",
        "optional",
        "eval_loss_se_docs_nats",
        "nats/token",
        "float",
        "standard error of `eval_loss_nats` clustered by held-out document (file): the windows "
        "of one file are correlated, so this is the honest sampling noise of the test set "
        "(records since 2026-12-02)",
    ),
    _c(
        "evaluate",
        "optional",
        "delta_loss_vs_fp32_se_docs_nats",
        "nats/token",
        "float",
        "paired standard error of the delta, clustered by held-out document (file)",
    ),
    _c(
        "evaluate",
        "core",
        "select_loss_nats",
        "nats/token",
        "float",
        "loss on the model-selection split (the first half of the held-out documents; the test "
        "split `eval_loss_nats` is the second half), in the training precision: "
        "learning rates are chosen on it, never on the test split",
    ),
    _c(
        "evaluate",
        "core",
        "select_loss_se_nats",
        "nats/token",
        "float",
        "standard error of `select_loss_nats` over its sequences",
    ),
    _c(
        "evaluate",
        "core",
        "eval_bits_per_byte",
        "bits/byte",
        "float",
        "held-out nats summed over the test windows / ln 2 / `eval_text_bytes`: comparable "
        "across tokenizers (for bytes, `eval_loss_nats / ln 2` up to the separators, which "
        "predict no text byte)",
    ),
    _c(
        "evaluate",
        "core",
        "eval_bits_per_byte_se",
        "bits/byte",
        "float",
        "standard error of `eval_bits_per_byte` over held-out sequences (delta method for the "
        "ratio of nats to bytes)",
    ),
    _c(
        "evaluate",
        "optional",
        "eval_bits_per_byte_se_docs",
        "bits/byte",
        "float",
        "standard error of `eval_bits_per_byte` clustered by held-out document, like "
        "`eval_loss_se_docs_nats` (records since 2026-12-03)",
    ),
    _c(
        "evaluate",
        "optional",
        "eval_text_bytes",
        "bytes",
        "int",
        "UTF-8 bytes of text that the test windows predict (separators and special tokens "
        "count 0; records since 2026-12-03)",
    ),
    _c(
        "evaluate",
        "core",
        "delta_loss_vs_fp32_nats",
        "nats/token",
        "float",
        "this precision's loss minus fp32's, same params, same sequences",
    ),
    _c(
        "evaluate",
        "core",
        "delta_loss_vs_fp32_se_nats",
        "nats/token",
        "float",
        "paired standard error of the delta over sequences",
    ),
    _c("evaluate", "core", "delta_loss_vs_fp32_pct", "%", "float", "100 x delta / fp32 loss"),
    _c(
        "evaluate",
        "core",
        "logit_rel_err_mean",
        "-",
        "float",
        "`||z - z_fp32|| / ||z_fp32||` of the logit vector, "
        "mean over the positions of the first 8 held-out sequences",
    ),
    _c("evaluate", "core", "logit_rel_err_max", "-", "float", "the same, max over positions"),
    _c(
        "evaluate",
        "core",
        "param_bytes",
        "bytes",
        "int",
        "real bytes of the params converted to this precision",
    ),
    _c(
        "evaluate",
        "optional",
        "param_bytes_vs_fp32",
        "-",
        "float",
        "`param_bytes` / the fp32 params' bytes (records since 2026-12-02)",
    ),
    _c(
        "evaluate",
        "optional",
        "weight_bits",
        "bits",
        "int",
        "bits per weight of the converted layers' format (32 fp32, 16 bf16, 8 int8 / w8a8 / "
        "fp8 / fp8a8, 4 int4; scales not counted): the precision law's P (records since "
        "2026-12-03)",
    ),
    _c(
        "evaluate",
        "core",
        "eval_wall_s",
        "s",
        "float",
        "wall time of evaluating all of this model's precisions",
    ),
    # ---- latency (jscale.latency.measure_latency)
    _c(
        "latency",
        "optional",
        "latency_from_point_id",
        "-",
        "str",
        "the point whose model was timed: latency depends only on the shapes and the precision, "
        "so the other token budgets, seeds and lrs of a size and precision carry that "
        "measurement (fit latency on the rows where this equals `point_id`)",
    ),
    _c("latency", "latency", "latency_batch", "sequences", "int", "sequences decoded together"),
    _c("latency", "latency", "prompt_tokens", "tokens", "int", "prompt length (prefill)"),
    _c(
        "latency",
        "latency",
        "gen_tokens",
        "tokens",
        "int",
        "greedy tokens generated per timed decode run",
    ),
    _c(
        "latency",
        "latency",
        "latency_repeats",
        "runs",
        "int",
        "timed runs behind every latency statistic",
    ),
    _c(
        "latency",
        "latency",
        "kernel_layout",
        "-",
        "str",
        "how projection kernels were stored (`jscale.formulation`): `in_out` as trained, "
        "`out_in` transposed",
    ),
    _c(
        "latency",
        "latency",
        "matmul_min_rows",
        "rows",
        "int",
        "rows each projection's tokens were padded to (`jscale.formulation`; 1 = none)",
    ),
    _c(
        "latency",
        "optional",
        "latency_weights",
        "-",
        "str",
        "the weights latency was timed with: `trained` (the point's own checkpoint) or `random` "
        "(the latency ladder's randomly initialised model, `jscale.ladder`: latency depends on "
        "shapes and precision, not on what the weights learned)",
    ),
    _c(
        "latency",
        "optional",
        "formulation_source",
        "-",
        "str",
        "where `kernel_layout` and `matmul_min_rows` came from: `autotune` (the fastest "
        "candidate timed on this device for the format and shape class, `jscale.autotune`), "
        "`pinned` (the config's `[latency]` keys), `autotune + pinned`, or `given` (passed in)",
    ),
    _c(
        "latency",
        "optional",
        "formulation_class",
        "-",
        "str",
        "the shape class the formulation was chosen for (`formulation.shape_class`): `small` "
        "(d_model x d_ff < 2^16) or `large` (timed with weights streamed from memory)",
    ),
    _c(
        "latency",
        "latency",
        "compile_prefill_s",
        "s",
        "float",
        "ahead-of-time compile time of prefill (not timed)",
    ),
    _c(
        "latency",
        "latency",
        "compile_decode_s",
        "s",
        "float",
        "ahead-of-time compile time of the decode loop (not timed)",
    ),
    *[
        _c(
            "latency",
            "latency",
            f"prefill_ms_{s}",
            "ms",
            "float",
            f"prompt into an empty KV cache, {w} {_STAT}",
        )
        for s, w in (
            ("median", "median"),
            ("q1", "first quartile"),
            ("q3", "third quartile"),
            ("min", "fastest"),
            ("max", "slowest"),
        )
    ],
    *[
        _c(
            "latency",
            "latency",
            f"decode_ms_per_token_{s}",
            "ms/token",
            "float",
            f"one `lax.scan` of `gen_tokens` greedy steps / `gen_tokens`, {w} {_STAT}",
        )
        for s, w in (
            ("median", "median"),
            ("q1", "first quartile"),
            ("q3", "third quartile"),
            ("min", "fastest"),
            ("max", "slowest"),
        )
    ],
    _c(
        "latency",
        "latency",
        "prefill_tokens_per_s",
        "tokens/s",
        "float",
        "`latency_batch x prompt_tokens / prefill_ms_median`",
    ),
    _c(
        "latency",
        "latency",
        "decode_tokens_per_s",
        "tokens/s",
        "float",
        "`latency_batch / decode_ms_per_token_median`",
    ),
    _c(
        "latency",
        "latency",
        "weight_bytes",
        "bytes",
        "int",
        "bytes of the params as run (converted, laid out)",
    ),
    _c(
        "latency",
        "latency",
        "kv_cache_bytes",
        "bytes",
        "int",
        "K and V buffers of `prompt + gen` positions",
    ),
    *[
        _c(
            "latency",
            "optional",
            f"xla_{part}_{k}_bytes",
            "bytes",
            "int",
            f"XLA's memory analysis of the compiled {part}: {v}",
        )
        for part in ("prefill", "decode")
        for k, v in _XLA.items()
    ],
    _c(
        "latency",
        "latency",
        "prefill_bound_ms",
        "ms",
        "float",
        "roofline lower bound of prefill: max(bytes / read bandwidth, "
        "FLOPs at the measured matmul rates)",
    ),
    _c(
        "latency",
        "latency",
        "prefill_bound_kind",
        "-",
        "str",
        "`memory` or `compute`: which term sets the bound",
    ),
    _c(
        "latency",
        "latency",
        "prefill_efficiency",
        "-",
        "float",
        "`prefill_bound_ms / prefill_ms_median` (1 = at the roofline)",
    ),
    _c(
        "latency",
        "latency",
        "decode_bound_ms_per_token",
        "ms/token",
        "float",
        "roofline lower bound of one decode step: max((weight + KV bytes) / read bandwidth, "
        "FLOPs at the measured rates)",
    ),
    _c("latency", "latency", "decode_bound_kind", "-", "str", "`memory` or `compute`"),
    _c(
        "latency",
        "latency",
        "decode_efficiency",
        "-",
        "float",
        "`decode_bound_ms_per_token / decode_ms_per_token_median` (1 = at the roofline)",
    ),
    _c(
        "latency",
        "latency",
        "roofline_read_bandwidth_bytes_per_s",
        "bytes/s",
        "float",
        "measured read-only streaming bandwidth (`jscale info`) x mesh devices: the bounds use it",
    ),
    _c(
        "latency",
        "latency",
        "roofline_matmul_flops_per_s",
        "FLOP/s",
        "float",
        "measured dense matmul rate of the precision's format x mesh devices",
    ),
    _c(
        "latency",
        "latency",
        "roofline_rw_bandwidth_bytes_per_s",
        "bytes/s",
        "float",
        "measured read + write (in-place scale) bandwidth, for comparison; no bound uses it",
    ),
    _c(
        "latency",
        "optional",
        "roofline_cache_bytes",
        "bytes",
        "float",
        "measured effective cache of one device (`roofline.measure_cache_bytes`: the largest "
        "working set read at >= 1.5x DRAM bandwidth); a model whose `weight_bytes` + "
        "`kv_cache_bytes` fit in it is cache-resident, and latency laws are fitted above it "
        "(`analysis.cache_resident`); NaN off CPU",
    ),
    _c(
        "latency",
        "optional",
        "mesh_shape",
        "-",
        "str",
        "the `[mesh]` latency ran on (`data=2,fsdp=2`); empty without a mesh",
    ),
    _c(
        "latency",
        "latency",
        "mesh_devices",
        "devices",
        "int",
        "devices the latency ran on (1 without a mesh)",
    ),
    # ---- where and with what (jscale.sweep provenance)
    _c(
        "provenance",
        "core",
        "device_platform",
        "-",
        "str",
        "JAX platform of the default device (`cpu`, `gpu`, `tpu`)",
    ),
    _c("provenance", "core", "device_kind", "-", "str", "the default device's kind"),
    _c("provenance", "core", "device_count", "devices", "int", "JAX devices visible"),
    _c("provenance", "core", "cpu", "-", "str", "host processor"),
    _c("provenance", "core", "host_cpus", "cores", "int", "host logical CPUs"),
    _c("provenance", "core", "hostname", "-", "str", "host that wrote the record"),
    *[
        _c("provenance", "core", f"{lib}_version", "-", "str", f"{lib} version")
        for lib in ("jscale", "jax", "flax", "optax", "numpy", "python")
    ],
    _c(
        "provenance",
        "optional",
        "git_commit",
        "-",
        "str",
        "the jscale checkout's commit (empty outside git)",
    ),
    _c(
        "provenance",
        "optional",
        "git_dirty",
        "-",
        "bool",
        "whether tracked files had uncommitted changes",
    ),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
if len(BY_NAME) != len(COLUMNS):  # pragma: no cover - a typo in the table above
    raise RuntimeError("jscale.schema: a column is listed twice")

# The names readers use most (analysis and figure defaults).
N = "params_non_embedding"
TOKENS = "train_tokens"
LOSS = "eval_loss_nats"
LOSS_SE = "eval_loss_se_nats"
LOSS_SE_DOCS = "eval_loss_se_docs_nats"
PRECISION = "inference_precision"
DELTA = "delta_loss_vs_fp32_nats"
DELTA_SE = "delta_loss_vs_fp32_se_nats"
DECODE = "decode_ms_per_token_median"
PREFILL = "prefill_ms_median"
TOKENS_TARGET = "train_tokens_target"
COMPUTE = "compute_budget_flops"
FLOPS = "train_flops_6nd"
SELECT = "select_loss_nats"
SEED = "seed"
LR = "lr_peak"
for _name in (
    N,
    TOKENS,
    LOSS,
    LOSS_SE,
    PRECISION,
    DELTA,
    DELTA_SE,
    DECODE,
    PREFILL,
    TOKENS_TARGET,
    COMPUTE,
    FLOPS,
    SELECT,
    SEED,
    LR,
):
    assert _name in BY_NAME, _name


# The loss curve of every run (``OUT/curves/<train key>.csv``, ``jscale.results.load_curves``):
# column -> (unit, meaning).
CURVE_COLUMNS = {
    "params_non_embedding": ("params", "the run's N (training compute so far: 6 x N x tokens)"),
    "step": ("steps", "optimizer updates done"),
    "tokens": ("tokens", "`step x batch_size x seq_len`: training tokens seen"),
    "lr": ("-", "learning rate of the last update"),
    "train_loss_nats": (
        "nats/token",
        "mean training loss of the last call's steps (`steps_per_call` training batches)",
    ),
    "heldout_loss_nats": (
        "nats/token",
        "loss on 8192 tokens (evenly spaced windows) of the model-selection split (never the "
        "test split), in the training precision",
    ),
    "phase": (
        "-",
        "`trunk` (WSD, constant lr, shared by the budgets of a size), `cooldown` (WSD branch) "
        "or `train` (a cosine run)",
    ),
}

# What changed in the columns, newest first: (date, change).  Rendered into docs/schema.md.
HISTORY = (
    (
        "2026-12-03",
        "records gain the optional `train_cpus` (CPUs the training process could use: `jscale "
        "sweep --train-jobs` trains in processes pinned to shares of the CPUs)",
    ),
    (
        "2026-12-03",
        "token corpora: records gain the optional `tokenizer`, `eval_text_bytes` and "
        "`eval_bits_per_byte_se_docs`; `eval_bits_per_byte` divides by the bytes of text the "
        "test windows predict (separators count 0 bytes, so byte-corpus values are higher than "
        "before by about 1 part in 20,000; a record without `eval_text_bytes` has the old value)",
    ),
    (
        "2026-12-03",
        "precisions `int4` (`int4-g32`, `int4-g128`), `fp8` and `fp8a8`; records gain the "
        "optional `weight_bits`",
    ),
    (
        "2026-12-02",
        "latency records gain the optional `latency_weights` (`trained` or `random`), "
        "`formulation_source` and `formulation_class` (the autotuned formulation's provenance); "
        "a sweep's latency ladder writes its own table (`latency_ladder.csv`, `LADDER_CORE`)",
    ),
    (
        "2026-12-02",
        "latency records gain the optional `roofline_cache_bytes` (the measured effective "
        "cache); fits of latency laws leave out cache-resident models when enough are above it",
    ),
    (
        "2026-12-02",
        "the token, seed and learning-rate axes: records gain `train_tokens_target`, "
        "`compute_budget_flops` (optional), `schedule`, `warmup_tokens`, `cooldown_tokens`, "
        "`epochs`, `select_loss_nats`, `select_loss_se_nats`, `latency_from_point_id`, "
        "`eval_loss_se_docs_nats`, `delta_loss_vs_fp32_se_docs_nats` (optional); "
        "`point_id` carries the budget and lr (`N<size>-D<tokens>-seed<s>-lr<lr>-...`); "
        "`eval_loss_nats` is measured on the second half of the held-out documents "
        "(the first half is the model-selection split).",
    ),
    (
        "2026-12-02",
        "sweep records gain `param_bytes_vs_fp32`; `device_count` and `host_cpus` are "
        "integers (were strings). `latency.measure_latency` and `jscale bench latency --csv` write "
        "`latency_batch`, `latency_repeats`, `inference_precision` (were `batch`, `n_repeats`, "
        "`precision`); `evaluate.compare_precisions` returns the record's names "
        "(`inference_precision`, `delta_loss_vs_fp32_nats`, `delta_loss_vs_fp32_se_nats`, "
        "`delta_loss_vs_fp32_pct`; were `precision`, `delta_loss_nats`, `delta_loss_se_nats`, "
        "`delta_loss_pct`). Same values for the same seeds.",
    ),
    (
        "2026-11-30",
        "`roofline_bandwidth_bytes_per_s` (read + write, which the bounds used) became "
        "`roofline_read_bandwidth_bytes_per_s` (read-only, which the bounds use now) and "
        "`roofline_rw_bandwidth_bytes_per_s`. Older records fail the check: load them with "
        "`check=False`.",
    ),
)


def columns(source: str | None = None, group: str | None = None) -> list[str]:
    """Column names, in schema order, optionally only those of one ``source`` / ``group``."""
    return [c.name for c in COLUMNS if source in (None, c.source) and group in (None, c.group)]


def part(source: str, values: Mapping) -> dict:
    """``values`` as a dict, after checking its keys are columns of ``source``: an unknown key,
    or a missing ``core``/``latency`` column of that source, raises ``SchemaError`` naming it.
    Writers build their part of every record through this."""
    known = {c.name: c for c in COLUMNS if c.source == source}
    if not known:
        raise SchemaError(
            f"unknown schema source {source!r}; "
            f"sources: {', '.join(sorted({c.source for c in COLUMNS}))}"
        )
    unknown = sorted(set(values) - set(known))
    missing = [n for n, c in known.items() if c.group != "optional" and n not in values]
    if unknown or missing:
        raise SchemaError(
            f"{source} record part: "
            + "; ".join(
                ([f"columns not in jscale.schema: {', '.join(unknown)}"] if unknown else [])
                + ([f"missing columns: {', '.join(missing)}"] if missing else [])
            )
        )
    return dict(values)


# The columns every latency-ladder record holds (``jscale.ladder``; ``table="ladder"``): the
# point, the model's shape, every ``latency`` column and the provenance.  A ladder model is not
# trained, so the training and evaluation columns are absent.
LADDER_CORE: tuple[str, ...] = (
    "point_id",
    "sweep_name",
    "config_hash",
    "size_target_params_non_embedding",
    "inference_precision",
    "created_at",
    "d_model",
    "n_layers",
    "n_heads",
    "d_ff",
    "vocab_size",
    "max_seq_len",
    "tie_embeddings",
    "params_total",
    "params_non_embedding",
    "params_embedding",
    "latency_weights",
)


def check_columns(names: Iterable[str], where: str = "table", table: str = "results") -> None:
    """Check a table's column names: every one must be in the schema, every ``core`` column
    present, and the ``latency`` columns all present or all absent.  ``table="ladder"``: a
    latency-ladder table instead (``LADDER_CORE``, every ``latency`` column and the
    provenance).  Raises ``SchemaError`` naming the unknown and missing columns."""
    have = set(names)
    unknown = sorted(have - set(BY_NAME))
    lat = [c.name for c in COLUMNS if c.group == "latency"]
    if table == "ladder":
        need = [*LADDER_CORE, *lat]
        need += [c.name for c in COLUMNS if c.source == "provenance" and c.group == "core"]
        missing = [n for n in need if n not in have]
    else:
        missing = [c.name for c in COLUMNS if c.group == "core" and c.name not in have]
        if any(n in have for n in lat):
            missing += [n for n in lat if n not in have]
    if unknown or missing:
        raise SchemaError(
            f"{where} does not match jscale.schema: "
            + "; ".join(
                ([f"unknown columns: {', '.join(unknown)}"] if unknown else [])
                + ([f"missing columns: {', '.join(missing)}"] if missing else [])
            )
        )


def markdown() -> str:
    """The schema as the Markdown page ``docs/schema.md``."""
    lines = [
        "# Results schema",
        "",
        "<!-- generated by `python -m jscale.schema > docs/schema.md`; "
        "tests/test_schema.py fails when this page and jscale/schema.py differ -->",
        "",
        "`jscale.load_results(DIR)` returns a sweep's records as a pandas DataFrame, "
        "one row per point (size, token budget, seed, lr, training precision, inference "
        "precision); "
        "it checks the columns against this table. "
        "A value that was NaN or Inf is stored as null (JSON has neither) and loads as NaN.",
        "",
        "Groups: **core** columns are in every record; "
        "**latency** columns are there when the sweep measured latency "
        "(`[latency] enabled = true`), all or none; **optional** columns may be absent or empty.",
        "",
        "| column | unit | type | group | filled by | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for c in COLUMNS:
        lines.append(
            f"| `{c.name}` | {c.unit} | {c.dtype} | {c.group} | {c.source} | {c.meaning} |"
        )
    lines += [
        "",
        "## Loss curves",
        "",
        "`jscale.load_curves(DIR)` returns every run's loss curve (`DIR/curves/<train key>.csv`), "
        "sampled at log-spaced steps; a WSD branch's curve holds its trunk's points up to the "
        "branch, then its cooldown's.",
        "",
        "| column | unit | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{k}` | {u} | {m} |" for k, (u, m) in CURVE_COLUMNS.items()]
    lines += ["", "## Changes", ""] + [f"- {date}: {change}" for date, change in HISTORY]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
