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
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jscale import checkpoint, data, model, results
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


def train_hash(tp: TrainPoint, corpus_id: str) -> str:
    return _sha({"format": FORMAT, "model": dataclasses.asdict(tp.model), "train": dataclasses.asdict(tp.train),
                 "corpus": corpus_id})


def point_id(tp: TrainPoint, precision: str) -> str:
    return f"N{round(tp.size_target)}-seed{tp.seed}-{tp.train_precision}-{precision}"


def train_key(tp: TrainPoint, thash: str) -> str:
    return f"N{round(tp.size_target)}-seed{tp.seed}-{tp.train_precision}-{thash[:12]}"


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


def make_plan(sweep: Sweep, corpus: data.Corpus, *, force: bool = False, worker: tuple[int, int] = (0, 1)) -> Plan:
    """Which records of ``sweep`` (this worker's share) exist, are stale, or are still to do."""
    cid = corpus_digest(corpus)
    i, n = worker
    todo, done, stale, hashes = [], 0, [], {}
    for k, tp in enumerate(sweep.train_points):
        if k % n != i:
            continue
        th = hashes[id(tp)] = train_hash(tp, cid)
        need = []
        for prec in sweep.precisions:
            path = results.record_path(sweep.out_dir, point_id(tp, prec))
            if path.exists() and not force:
                try:
                    old = json.loads(path.read_text()).get("config_hash")
                except (OSError, json.JSONDecodeError):
                    old = None
                if old == _config_hash(sweep, th, prec):
                    done += 1
                    continue
                stale.append(path.stem)
            need.append(prec)
        if need:
            todo.append((tp, need))
    return Plan(todo=todo, done=done, stale=stale, hashes=hashes, corpus_id=cid)


def _provenance() -> dict:
    import flax
    import jax
    import optax

    import jscale
    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"jscale_version": jscale.__version__, "jax_version": jax.__version__, "flax_version": flax.__version__,
            "optax_version": optax.__version__, "numpy_version": np.__version__,
            "python_version": platform.python_version(), "git_commit": commit, "git_dirty": dirty,
            "hostname": platform.node()}


class _Log:
    """Timestamped lines to stderr (through tqdm, so bars stay intact) and to OUT/sweep.log."""

    def __init__(self, out_dir: Path, echo: bool):
        self.path, self.echo = out_dir / "sweep.log", echo

    def __call__(self, msg: str) -> None:
        now = _dt.datetime.now()
        with open(self.path, "a") as f:
            f.write(f"{now.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if self.echo:
            from tqdm.auto import tqdm
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


def run_sweep(sweep: Sweep, *, force: bool = False, retrain: bool = False, worker: tuple[int, int] = (0, 1),
              progress: bool = True, echo: bool = True) -> SweepSummary:
    """Run (or resume) ``sweep``; returns what was written, skipped, trained and failed.

    Raises ``ConfigError`` (before any training) when the output directory holds stale
    records and ``force`` is off, or the held-out set does not fit the corpus.
    """
    from tqdm.auto import tqdm

    from jscale import latency, roofline, train
    from jscale.config import ConfigError
    from jscale.precision_eval import compare_precisions

    t_start = time.perf_counter()
    i, n = worker
    if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
        raise ConfigError(f"worker must be I/N with 0 <= I < N, got {i}/{n}")
    mesh = None
    if sweep.mesh is not None:  # the device count must fit before anything runs
        from jscale import sharding
        mesh = sharding.make_mesh(**sweep.mesh)
        for tp in sweep.train_points:
            if tp.train.batch_size % sharding.batch_devices(mesh):
                raise ConfigError(f"[mesh] {sharding.mesh_shape_str(mesh)}: data x fsdp must divide "
                                  f"train.batch_size = {tp.train.batch_size}")
    corpus = data.load_corpus(sweep.corpus_path, val_percent=sweep.val_percent)
    for seq_len, n_tokens in {(tp.train.seq_len, tp.train.eval_tokens) for tp in sweep.train_points}:
        data.eval_batches(corpus.val, seq_len, n_tokens)  # every held-out set must fit before anything runs
    plan = make_plan(sweep, corpus, force=force, worker=worker)
    if plan.stale:
        raise ConfigError(
            f"{sweep.out_dir} holds {len(plan.stale)} record(s) made with a different config "
            f"(e.g. {', '.join(plan.stale[:3])}); rerun with --force to redo them, or set another out_dir")

    out = sweep.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.toml").write_text(sweep.source)
    log = _Log(out, echo)
    n_todo = sum(len(p) for _, p in plan.todo)
    share = f" (worker {i + 1} of {n})" if n > 1 else ""
    nm, npr = len(sweep.train_points), len(sweep.precisions)
    log(f"sweep {sweep.name!r}{share}: {nm} model{'s' * (nm != 1)} x {npr} precision{'s' * (npr != 1)}; "
        f"{plan.done} record(s) done, {n_todo} to run -> {out}")
    ours = {point_id(tp, p) for tp in sweep.train_points for p in sweep.precisions}
    foreign = sorted(results.finished_points(out) - ours)
    if foreign:
        log(f"note: {len(foreign)} record(s) in {out} are not points of this config (e.g. {foreign[0]}); "
            "they are kept, and load_results returns them too")
    if not plan.todo:
        return SweepSummary(0, plan.done, 0, 0, [], time.perf_counter() - t_start, out)

    prov = _provenance()
    roof = roofline.roofline() if sweep.latency.enabled else None
    bar = tqdm(total=n_todo, unit="rec", desc="sweep", position=0, disable=None if progress else True,
               dynamic_ncols=True)
    summary = SweepSummary(0, plan.done, 0, 0, [], 0.0, out)
    try:
        for tp, precisions in plan.todo:
            th = plan.hashes[id(tp)]
            ck = out / "checkpoints" / f"{train_key(tp, th)}.npz"
            counts = model.count_params(tp.model)
            name = (f"N={counts['non_embedding']:.3g} (d_model {tp.model.d_model} x {tp.model.n_layers} layers) "
                    f"seed {tp.seed} {tp.train_precision}")
            if ck.exists() and not retrain:
                params, meta = checkpoint.load(ck, tp.model)
                summary.loaded += 1
                log(f"{name}: loaded checkpoint {ck.name}")
            else:
                log(f"{name}: training on {tp.train.total_steps * tp.train.tokens_per_step:,} tokens "
                    f"(lr {tp.train.lr:.3g})")
                try:
                    r = train.train(tp.model, tp.train, corpus, progress=progress, progress_position=1,
                                    evaluate_heldout=False, mesh=mesh)
                except train.TrainingDiverged as e:
                    log(f"{name}: FAILED, training diverged: {e}")
                    summary.failed.append(f"{name}: {e}")
                    bar.update(len(precisions))
                    continue
                k = max(1, len(r.losses_nats) // 20)
                meta = {"train_wall_s": r.train_seconds, "train_compile_s": r.compile_seconds,
                        "train_tokens": r.tokens, "train_steps": len(r.losses_nats),
                        "train_tokens_per_s": r.tokens_per_second,
                        "train_flops": r.flops_per_token_train * r.tokens,
                        "train_loss_final_nats": float(np.mean(r.losses_nats[-k:])),
                        "train_hash": th}
                params = r.params
                host = params if mesh is None else sharding.to_host(params)  # a collective: every process
                if _writer():
                    checkpoint.save(ck, host, meta)
                summary.trained += 1
                log(f"{name}: trained in {r.train_seconds:.1f} s (+{r.compile_seconds:.1f} s compile), "
                    f"final train loss {meta['train_loss_final_nats']:.3f} nats")
            eval_set = data.eval_batches(corpus.val, tp.train.seq_len, tp.train.eval_tokens)
            eval_tokens = eval_set.shape[0] * tp.train.seq_len  # predicted tokens, for the records
            t0 = time.perf_counter()
            ev = compare_precisions(params, tp.model, eval_set, precisions, tp.train.eval_batch_size)
            eval_s = time.perf_counter() - t0
            ev = {row["precision"]: row for row in ev.to_dict("records")}
            for prec in precisions:
                bar.set_postfix_str(f"{point_id(tp, prec)}", refresh=True)
                lat = {}
                if sweep.latency.enabled:
                    L = sweep.latency
                    lat = latency.measure_latency(params, tp.model, prec, batch=L.batch, prompt_tokens=L.prompt_tokens,
                                                  gen_tokens=L.gen_tokens, repeats=L.repeats, warmup=L.warmup,
                                                  roof=roof, mesh=mesh, kernel_layout=L.kernel_layout,
                                                  min_rows=L.min_rows)
                    lat.pop("precision")
                    lat["latency_repeats"] = lat.pop("n_repeats")
                    lat["latency_batch"] = lat.pop("batch")
                rec = _record(sweep, tp, prec, th, plan.corpus_id, counts, meta, ev[prec], eval_tokens, eval_s, lat,
                              prov, corpus)
                if _writer():
                    results.write_record(out, point_id(tp, prec), rec)
                summary.written += 1
                bar.update(1)
                e = ev[prec]
                msg = f"{name} -> {prec}: held-out loss {e['eval_loss_nats']:.4f} nats/token (SE {e['eval_loss_se_nats']:.4f})"
                if lat:
                    msg += (f", decode {lat['decode_ms_per_token_median']:.3f} ms/token, "
                            f"prefill {lat['prefill_ms_median']:.2f} ms")
                log(msg)
            del params
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t_start
    log(f"done: {summary.written} record(s) written, {summary.skipped} already done, {summary.trained} model(s) "
        f"trained, {summary.loaded} loaded from checkpoints, {len(summary.failed)} failed, "
        f"{summary.seconds:.0f} s")
    return summary


def _writer() -> bool:
    """Whether this process writes records and checkpoints: always, except in a multi-host
    JAX job (``jax.distributed``), where only process 0 does."""
    import jax
    return jax.process_index() == 0


def _record(sweep: Sweep, tp: TrainPoint, prec: str, th: str, corpus_id: str, counts: dict, meta: dict,
            ev: dict, eval_tokens: int, eval_s: float, lat: dict, prov: dict, corpus: data.Corpus) -> dict:
    c, t = tp.model, tp.train
    rec = {
        "sweep_name": sweep.name, "config_hash": _config_hash(sweep, th, prec), "train_hash": th,
        "size_target_params_non_embedding": tp.size_target, "seed": tp.seed,
        "train_precision": tp.train_precision, "inference_precision": prec,
        "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads, "d_ff": c.d_ff,
        "vocab_size": c.vocab_size, "max_seq_len": c.max_seq_len, "tie_embeddings": c.tie_embeddings,
        "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
        "params_embedding": counts["embedding"],
        "batch_size": t.batch_size, "seq_len": t.seq_len, "lr_peak": t.lr,
        "train_tokens": meta["train_tokens"], "train_steps": meta["train_steps"],
        "train_flops": meta["train_flops"], "train_flops_6nd": 6.0 * counts["non_embedding"] * meta["train_tokens"],
        "train_wall_s": meta["train_wall_s"], "train_compile_s": meta["train_compile_s"],
        "train_tokens_per_s": meta["train_tokens_per_s"], "train_loss_final_nats": meta["train_loss_final_nats"],
        "eval_tokens": eval_tokens,
        "eval_loss_nats": ev["eval_loss_nats"], "eval_loss_se_nats": ev["eval_loss_se_nats"],
        "eval_bits_per_byte": ev["eval_bits_per_byte"],
        "eval_bits_per_byte_se": ev["eval_loss_se_nats"] / math.log(2),
        "delta_loss_vs_fp32_nats": ev["delta_loss_nats"], "delta_loss_vs_fp32_se_nats": ev["delta_loss_se_nats"],
        "delta_loss_vs_fp32_pct": ev["delta_loss_pct"],
        "logit_rel_err_mean": ev["logit_rel_err_mean"], "logit_rel_err_max": ev["logit_rel_err_max"],
        "param_bytes": ev["param_bytes"], "eval_wall_s": eval_s,
        "corpus": corpus.name, "corpus_digest": corpus_id, "val_percent": sweep.val_percent,
        **lat, **prov,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return rec


def export_csv(out_dir: str | os.PathLike) -> Path:
    """Write ``OUT/results.csv`` (all records, atomically) and return its path."""
    df = results.load_results(out_dir)
    path = Path(out_dir) / "results.csv"
    tmp = path.with_name(f".results.csv.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
