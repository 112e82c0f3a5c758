"""Run a sweep: train each (size, seed, training precision) once, checkpoint it, then evaluate
and time every inference precision from the checkpoint, one record per point.

A point is (size, seed, training precision, inference precision); its record is written
atomically to ``OUT/records/<point_id>.json`` (``jscale.results``) as soon as it is measured.
Trained params go to ``OUT/checkpoints/`` (``jscale.checkpoint``), keyed by a hash of
everything that determines them (model, training config, corpus content), so evaluating a
new precision or re-measuring latency never retrains.

Resume: a point whose record exists with the same config hash is skipped.  A record made
with a different config is *stale*: the run stops before any compute and asks for ``force``
(redo) or another output directory, so results are never silently replaced.  ``force``
redoes every selected point from its checkpoint if the checkpoint is still valid;
``retrain`` retrains too.  ``worker=(i, n)`` runs only the training points with
``index % n == i`` (disjoint shares for parallel workers writing to one directory).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jscale import (
    __version__,
    checkpoint,
    data,
    evaluate,
    formulation,
    latency,
    results,
    roofline,
    schema,
    sharding,
    train,
)
from jscale.config import ConfigError, count_params
from jscale.sweep_config import Sweep, TrainPoint

FORMAT = 1  # bump when the meaning of a record or checkpoint changes


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def corpus_digest(corpus: data.Corpus) -> str:
    """Content hash of the tokens (train and held-out), the same on every machine."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(corpus.train).data)
    h.update(b"|")
    h.update(np.ascontiguousarray(corpus.val).data)
    return h.hexdigest()[:16]


def train_hash(point: TrainPoint, corpus_id: str) -> str:
    return _sha(
        {
            "format": FORMAT,
            "model": dataclasses.asdict(point.model),
            "train": dataclasses.asdict(point.train),
            "corpus": corpus_id,
        }
    )


def point_id(point: TrainPoint, precision: str) -> str:
    return f"N{round(point.size_target)}-seed{point.seed}-{point.train_precision}-{precision}"


def train_key(point: TrainPoint, thash: str) -> str:
    return f"N{round(point.size_target)}-seed{point.seed}-{point.train_precision}-{thash[:12]}"


@dataclasses.dataclass
class Plan:
    """What a run will do: for each training point (in order), the precisions still to measure."""

    todo: list[tuple[TrainPoint, list[str]]]
    done: int
    stale: list[str]
    hashes: dict[int, str]  # id(train point) -> train hash
    corpus_id: str


def _config_hash(sweep: Sweep, thash: str, precision: str) -> str:
    h = {"train": thash, "precision": precision, "latency": dataclasses.asdict(sweep.latency)}
    if sweep.mesh is not None:  # only when set: single-device records keep their hashes
        h["mesh"] = sweep.mesh
    return _sha(h)


def make_plan(
    sweep: Sweep, corpus: data.Corpus, *, force: bool = False, worker: tuple[int, int] = (0, 1)
) -> Plan:
    """Which records of ``sweep`` (this worker's share) exist, are stale, or are still to do."""
    corpus_id = corpus_digest(corpus)
    i, n = worker
    todo, done, stale, hashes = [], 0, [], {}
    for k, point in enumerate(sweep.train_points):
        if k % n != i:
            continue
        thash = hashes[id(point)] = train_hash(point, corpus_id)
        need = []
        for prec in sweep.precisions:
            path = results.record_path(sweep.out_dir, point_id(point, prec))
            if path.exists() and not force:
                try:
                    old = json.loads(path.read_text()).get("config_hash")
                except (OSError, json.JSONDecodeError):
                    old = None
                if old == _config_hash(sweep, thash, prec):
                    done += 1
                    continue
                stale.append(path.stem)
            need.append(prec)
        if need:
            todo.append((point, need))
    return Plan(todo=todo, done=done, stale=stale, hashes=hashes, corpus_id=corpus_id)


def _provenance() -> dict:
    """The provenance part of every record: software versions, git state, host and device."""

    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
        if commit:
            dirty = bool(
                subprocess.run(
                    ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
            )
    except (OSError, subprocess.SubprocessError):
        pass
    return schema.part(
        "provenance",
        {
            **roofline.device_info(),
            "jscale_version": __version__,
            "jax_version": jax.__version__,
            "flax_version": flax.__version__,
            "optax_version": optax.__version__,
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
            "git_commit": commit,
            "git_dirty": dirty,
            "hostname": platform.node(),
        },
    )


class _Log:
    """Timestamped lines to stderr (through tqdm, so bars stay intact) and to OUT/sweep.log."""

    def __init__(self, out_dir: Path, echo: bool):
        self.path, self.echo = out_dir / "sweep.log", echo

    def __call__(self, msg: str) -> None:
        now = _dt.datetime.now()
        with open(self.path, "a") as f:
            f.write(f"{now.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if self.echo:
            tqdm.write(f"{now.strftime('%H:%M:%S')} {msg}", file=sys.stderr)


@dataclasses.dataclass
class SweepSummary:
    written: int
    skipped: int
    trained: int
    loaded: int
    failed: list[str]
    seconds: float
    out_dir: Path


@dataclasses.dataclass
class _Run:
    """What every step of a sweep run needs: the validated sweep, its corpus and plan, the mesh,
    the log, and (once measuring starts) the roofline and provenance written into every record."""

    sweep: Sweep
    corpus: data.Corpus
    plan: Plan
    mesh: Any
    log: _Log
    summary: SweepSummary
    roof: dict | None = None
    provenance: dict | None = None


def run_sweep(
    sweep: Sweep,
    *,
    force: bool = False,
    retrain: bool = False,
    worker: tuple[int, int] = (0, 1),
    progress: bool = True,
    echo: bool = True,
) -> SweepSummary:
    """Run (or resume) ``sweep``; returns what was written, skipped, trained and failed.

    The steps: ``_start`` (check everything, plan, log), then per training point
    ``_train_point`` (load its checkpoint or train and save one) and ``_measure_point``
    (evaluate every precision on the held-out set, time each, write one record per precision).
    Raises ``ConfigError`` (before any training) when the output directory holds stale
    records and ``force`` is off, the mesh does not divide the batch, or the held-out set does
    not fit the corpus.
    """
    t_start = time.perf_counter()
    run = _start(sweep, force=force, worker=worker, echo=echo)
    if run.plan.todo:
        run.roof = roofline.roofline() if sweep.latency.enabled else None
        run.provenance = _provenance()
        n_todo = sum(len(p) for _, p in run.plan.todo)
        with tqdm(
            total=n_todo,
            unit="rec",
            desc="sweep",
            position=0,
            disable=None if progress else True,
            dynamic_ncols=True,
        ) as bar:
            for point, precisions in run.plan.todo:
                trained = _train_point(run, point, retrain=retrain, progress=progress)
                if trained is not None:
                    _measure_point(run, point, *trained, precisions, bar)
                else:
                    bar.update(len(precisions))
    s = run.summary
    s.seconds = time.perf_counter() - t_start
    if run.plan.todo:
        run.log(
            f"done: {s.written} record(s) written, {s.skipped} already done, "
            f"{s.trained} model(s) trained, "
            f"{s.loaded} loaded from checkpoints, {len(s.failed)} failed, {s.seconds:.0f} s"
        )
    return s


def _start(sweep: Sweep, *, force: bool, worker: tuple[int, int], echo: bool) -> _Run:
    """Check everything a run could fail on before any compute (worker share, mesh, corpus,
    held-out sets, stale records), make the plan, and log what it will do."""
    i, n = worker
    if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
        raise ConfigError(f"worker must be I/N with 0 <= I < N, got {i}/{n}")
    mesh = None
    if sweep.mesh is not None:  # the device count must fit before anything runs
        mesh = sharding.make_mesh(**sweep.mesh)
        for point in sweep.train_points:
            sharding.check_batch(mesh, point.train.batch_size, "train.batch_size")
    corpus = data.load_corpus(sweep.corpus_path, val_percent=sweep.val_percent)
    for point in {
        (point.train.seq_len, point.train.eval_tokens): point for point in sweep.train_points
    }.values():
        train.check_train_inputs(
            point.model, point.train, corpus
        )  # each distinct held-out set must fit
    plan = make_plan(sweep, corpus, force=force, worker=worker)
    if plan.stale:
        raise ConfigError(
            f"{sweep.out_dir} holds {len(plan.stale)} record(s) made with a different config "
            f"(e.g. {', '.join(plan.stale[:3])}); "
            "rerun with --force to redo them, or set another out_dir"
        )

    out = sweep.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.toml").write_text(sweep.source)
    log = _Log(out, echo)
    n_todo = sum(len(p) for _, p in plan.todo)
    share = f" (worker {i + 1} of {n})" if n > 1 else ""
    n_models, n_precisions = len(sweep.train_points), len(sweep.precisions)
    log(
        f"sweep {sweep.name!r}{share}: {n_models} model{'s' * (n_models != 1)} x {n_precisions} "
        f"precision{'s' * (n_precisions != 1)}; {plan.done} record(s) done, "
        f"{n_todo} to run -> {out}"
    )
    ours = {point_id(point, p) for point in sweep.train_points for p in sweep.precisions}
    foreign = sorted(results.finished_points(out) - ours)
    if foreign:
        log(
            f"note: {len(foreign)} record(s) in {out} are not points of this config "
            f"(e.g. {foreign[0]}); "
            "they are kept, and load_results returns them too"
        )
    return _Run(
        sweep=sweep,
        corpus=corpus,
        plan=plan,
        mesh=mesh,
        log=log,
        summary=SweepSummary(0, plan.done, 0, 0, [], 0.0, out),
    )


def _describe(point: TrainPoint) -> str:
    n = count_params(point.model)["non_embedding"]
    return (
        f"N={n:.3g} (d_model {point.model.d_model} x {point.model.n_layers} layers) "
        f"seed {point.seed} {point.train_precision}"
    )


def _train_point(run: _Run, point: TrainPoint, *, retrain: bool, progress: bool):
    """``(params, meta)`` of training point ``point``: loaded from its checkpoint, or trained and
    checkpointed; None when training diverged (logged and counted as failed)."""
    thash = run.plan.hashes[id(point)]
    ckpt = run.sweep.out_dir / "checkpoints" / f"{train_key(point, thash)}.npz"
    name = _describe(point)
    if ckpt.exists() and not retrain:
        params, meta = checkpoint.load(ckpt, point.model)
        run.summary.loaded += 1
        run.log(f"{name}: loaded checkpoint {ckpt.name}")
        return params, meta
    run.log(
        f"{name}: training on {point.train.total_steps * point.train.tokens_per_step:,} tokens "
        f"(lr {point.train.lr:.3g})"
    )
    try:
        r = train.train(
            point.model,
            point.train,
            run.corpus,
            progress=progress,
            progress_position=1,
            evaluate_heldout=False,
            mesh=run.mesh,
        )
    except train.TrainingDiverged as e:
        run.log(f"{name}: FAILED, training diverged: {e}")
        run.summary.failed.append(f"{name}: {e}")
        return None
    meta = {
        "train_wall_s": r.train_seconds,
        "train_compile_s": r.compile_seconds,
        "train_tokens": r.tokens,
        "train_steps": len(r.losses_nats),
        "train_tokens_per_s": r.tokens_per_second,
        "train_flops": r.flops_per_token_train * r.tokens,
        "train_loss_final_nats": r.final_loss_nats(),
        "train_hash": thash,
    }
    host_params = (
        r.params if run.mesh is None else sharding.to_host(r.params)
    )  # a collective: every process
    if _writer():
        checkpoint.save(ckpt, host_params, meta)
    run.summary.trained += 1
    run.log(
        f"{name}: trained in {r.train_seconds:.1f} s (+{r.compile_seconds:.1f} s compile), "
        f"final train loss {meta['train_loss_final_nats']:.3f} nats"
    )
    return r.params, meta


def _measure_point(
    run: _Run, point: TrainPoint, params, meta: dict, precisions: list[str], bar
) -> None:
    """Evaluate ``params`` in every precision on the held-out set (paired), time each precision,
    and write one record per precision as soon as it is measured."""
    eval_set = data.eval_batches(run.corpus.val, point.train.seq_len, point.train.eval_tokens)
    t0 = time.perf_counter()
    table = evaluate.compare_precisions(
        params, point.model, eval_set, precisions, point.train.eval_batch_size
    )
    eval_wall_s = time.perf_counter() - t0
    by_precision = {row.pop("inference_precision"): row for row in table.to_dict("records")}
    lat_cfg = run.sweep.latency
    for prec in precisions:
        bar.set_postfix_str(point_id(point, prec), refresh=True)
        lat = {}
        if lat_cfg.enabled:
            form = formulation.choose(
                prec, point.model, kernel_layout=lat_cfg.kernel_layout, min_rows=lat_cfg.min_rows
            )
            lat = latency.measure_latency(
                params,
                point.model,
                prec,
                batch=lat_cfg.batch,
                prompt_tokens=lat_cfg.prompt_tokens,
                gen_tokens=lat_cfg.gen_tokens,
                repeats=lat_cfg.repeats,
                warmup=lat_cfg.warmup,
                roof=run.roof,
                mesh=run.mesh,
                form=form,
            )
        ev = {**by_precision[prec], "eval_wall_s": eval_wall_s}
        rec = _record(run, point, prec, meta, ev, lat)
        if _writer():
            results.write_record(run.sweep.out_dir, rec["point_id"], rec)
        run.summary.written += 1
        bar.update(1)
        msg = (
            f"{_describe(point)} -> {prec}: held-out loss {ev['eval_loss_nats']:.4f} nats/token "
            f"(SE {ev['eval_loss_se_nats']:.4f})"
        )
        if lat:
            msg += (
                f", decode {lat['decode_ms_per_token_median']:.3f} ms/token, "
                f"prefill {lat['prefill_ms_median']:.2f} ms"
            )
        run.log(msg)


def _writer() -> bool:
    """Whether this process writes records and checkpoints: always, except in a multi-host
    JAX job (``jax.distributed``), where only process 0 does."""
    return jax.process_index() == 0


def _record(run: _Run, point: TrainPoint, prec: str, meta: dict, ev: dict, lat: dict) -> dict:
    """One results record, assembled from the schema's parts (``jscale.schema``)."""
    sweep, c, t = run.sweep, point.model, point.train
    thash = run.plan.hashes[id(point)]
    counts = count_params(c)
    identity = schema.part(
        "sweep",
        {
            "point_id": point_id(point, prec),
            "sweep_name": sweep.name,
            "config_hash": _config_hash(sweep, thash, prec),
            "train_hash": thash,
            "size_target_params_non_embedding": point.size_target,
            "seed": point.seed,
            "train_precision": point.train_precision,
            "inference_precision": prec,
            "corpus": run.corpus.name,
            "corpus_digest": run.plan.corpus_id,
            "val_percent": sweep.val_percent,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    config = schema.part(
        "config",
        {
            "d_model": c.d_model,
            "n_layers": c.n_layers,
            "n_heads": c.n_heads,
            "d_ff": c.d_ff,
            "vocab_size": c.vocab_size,
            "max_seq_len": c.max_seq_len,
            "tie_embeddings": c.tie_embeddings,
            "params_total": counts["total"],
            "params_non_embedding": counts["non_embedding"],
            "params_embedding": counts["embedding"],
            "batch_size": t.batch_size,
            "seq_len": t.seq_len,
            "lr_peak": t.lr,
        },
    )
    trained = schema.part(
        "train",
        {
            **{k: meta[k] for k in schema.columns("train") if k in meta},
            "train_flops_6nd": 6.0 * counts["non_embedding"] * meta["train_tokens"],
        },
    )
    return {
        **identity,
        **config,
        **trained,
        **schema.part("evaluate", ev),
        **(schema.part("latency", lat) if lat else {}),
        **run.provenance,
    }


def export_csv(out_dir: str | os.PathLike) -> Path:
    """Write ``OUT/results.csv`` (all records, atomically) and return its path."""
    df = results.load_results(out_dir)
    path = Path(out_dir) / "results.csv"
    tmp = path.with_name(f".results.csv.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
