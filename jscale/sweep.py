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
``retrain`` retrains too.  ``worker=(i, n)`` runs only the groups (WSD trunks with their
branches, or single cosine runs) with ``index % n == i`` (disjoint shares for parallel workers
writing to one directory).

Token budgets: with ``schedule = "wsd"`` the budgets of one (size, seed, lr, training precision)
are cooldown branches from one constant-lr trunk.  The trunk's state (params, optimizer state,
step) is checkpointed at every branch point (``OUT/checkpoints/trunk-*.npz``), so a kill costs at
most one segment and a rerun continues it; each branch's final params are checkpointed like a
cosine run's.  Every run's loss curve (training loss and the model-selection split's loss at
log-spaced steps) goes to ``OUT/curves/<train key>.csv`` (``jscale.results.load_curves``).
"""

from __future__ import annotations

import contextlib
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
    autotune,
    checkpoint,
    data,
    evaluate,
    ladder,
    latency,
    lock,
    model,
    results,
    roofline,
    schema,
    sharding,
    train,
)
from jscale.config import ConfigError, count_params, flops_per_token
from jscale.sweep_config import Sweep, TrainPoint, check_memory

FORMAT = 2  # bump when the meaning of a record or checkpoint changes


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def corpus_digest(corpus: data.Corpus) -> str:
    """Content hash of the tokens (train and held-out), the same on every machine (token files
    carry theirs: ``Corpus.digest``)."""
    if corpus.digest is not None:
        return corpus.digest
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


# Fields that do not change a WSD trunk: the budget and its cooldown.
_BRANCH_ONLY = ("tokens", "steps", "cooldown_frac", "cooldown_shape", "min_lr_ratio")


def trunk_hash(point: TrainPoint, corpus_id: str) -> str:
    """SHA-256 of everything that determines a WSD trunk's state at any step."""
    tc = {k: v for k, v in dataclasses.asdict(point.train).items() if k not in _BRANCH_ONLY}
    return _sha(
        {
            "format": FORMAT,
            "model": dataclasses.asdict(point.model),
            "trunk": tc,
            "corpus": corpus_id,
        }
    )


def _name(point: TrainPoint) -> str:
    return (
        f"N{round(point.size_target)}-D{point.budget}-seed{point.seed}-lr{point.train.lr:.3g}-"
        f"{point.train_precision}"
    )


def point_id(point: TrainPoint, precision: str) -> str:
    return f"{_name(point)}-{precision}"


def train_key(point: TrainPoint, thash: str) -> str:
    return f"{_name(point)}-{thash[:12]}"


@dataclasses.dataclass
class Plan:
    """What a run will do: for each training point (in order), the precisions still to measure."""

    todo: list[tuple[TrainPoint, list[str]]]
    done: int
    stale: list[str]
    hashes: dict[int, str]  # id(train point) -> train hash
    corpus_id: str
    ladder: list = dataclasses.field(default_factory=list)  # (target, cfg, precisions to time)
    corrupt: list = dataclasses.field(default_factory=list)  # point ids of unreadable records


def _config_hash(sweep: Sweep, thash: str, precision: str) -> str:
    h = {"train": thash, "precision": precision, "latency": dataclasses.asdict(sweep.latency)}
    if sweep.mesh is not None:  # only when set: single-device records keep their hashes
        h["mesh"] = sweep.mesh
    return _sha(h)


def ladder_id(target: float, precision: str) -> str:
    return f"ladder-N{round(target)}-{precision}"


def _ladder_hash(sweep: Sweep, cfg, precision: str) -> str:
    return _sha(
        {
            "format": FORMAT,
            "ladder": dataclasses.asdict(cfg),
            "precision": precision,
            "latency": dataclasses.asdict(sweep.latency),
        }
    )


CORRUPT = "corrupt"  # what ``_existing_hash`` says of a record that is not a readable JSON object


def _existing_hash(path: Path) -> str | None:
    """The ``config_hash`` of the record at ``path``; ``CORRUPT`` when the file is not a JSON
    object with a point id (truncated, garbled, ``[]``)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return CORRUPT
    if not isinstance(rec, dict) or "point_id" not in rec:
        return CORRUPT
    return rec.get("config_hash")


def _status(path: Path, expected: str, force: bool) -> str:
    """A record's state for the plan: "todo" (missing, or redone under ``force``), "done" (its
    hash matches), "corrupt" (redone: it holds nothing to keep) or "stale" (another config's)."""
    if force or not path.exists():
        return "todo"
    h = _existing_hash(path)
    if h == CORRUPT:
        return "corrupt"
    return "done" if h == expected else "stale"


def make_plan(
    sweep: Sweep, corpus: data.Corpus, *, force: bool = False, worker: tuple[int, int] = (0, 1)
) -> Plan:
    """Which records of ``sweep`` (this worker's share) exist, are stale or corrupt, or are still
    to do; the latency ladder's sizes are shared among workers by index too."""
    corpus_id = corpus_digest(corpus)
    i, n = worker
    todo, done, stale, corrupt, hashes = [], 0, [], [], {}
    mine = [p for k, group in enumerate(sweep.groups()) if k % n == i for p in group]

    def need_of(ids_hashes, kind):
        nonlocal done
        need = []
        for prec, pid, expected in ids_hashes:
            st = _status(results.record_path(sweep.out_dir, pid, kind), expected, force)
            if st == "done":
                done += 1
                continue
            {"stale": stale, "corrupt": corrupt}.get(st, []).append(pid)
            need.append(prec)
        return need

    for point in mine:  # a worker's share is whole trunks: branches need their trunk
        thash = hashes[id(point)] = train_hash(point, corpus_id)
        need = need_of(
            [(p, point_id(point, p), _config_hash(sweep, thash, p)) for p in sweep.precisions],
            results.RECORDS,
        )
        if need:
            todo.append((point, need))
    ladder_todo = []
    for k, (target, cfg) in enumerate(sweep.ladder):
        if k % n != i:
            continue
        need = need_of(
            [
                (p, ladder_id(target, p), _ladder_hash(sweep, cfg, p))
                for p in sweep.ladder_precisions
            ],
            results.LADDER,
        )
        if need:
            ladder_todo.append((target, cfg, need))
    return Plan(
        todo=todo,
        done=done,
        stale=stale,
        hashes=hashes,
        corpus_id=corpus_id,
        ladder=ladder_todo,
        corrupt=corrupt,
    )


def manifest(sweep: Sweep, corpus_id: str) -> dict:
    """What ``OUT/manifest.json`` says: the sweep's name, a digest of its config file, and the
    config hash of every record it makes (all workers' shares, the ladder too).  ``jscale.results``
    loads the records it lists (with these hashes) as the sweep's results."""
    recs = {
        point_id(p, prec): _config_hash(sweep, train_hash(p, corpus_id), prec)
        for p in sweep.train_points
        for prec in sweep.precisions
    }
    lad = {
        ladder_id(t, prec): _ladder_hash(sweep, cfg, prec)
        for t, cfg in sweep.ladder
        for prec in sweep.ladder_precisions
    }
    return {
        "sweep_name": sweep.name,
        "config_sha256": _sha(sweep.source),
        "corpus_digest": corpus_id,
        results.RECORDS: recs,
        results.LADDER: lad,
    }


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
        if _writer():  # one log per job, not one copy of every line per host
            with open(self.path, "a") as f:
                f.write(f"{now.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if self.echo:
            # one write per line: lines of --train-jobs processes sharing stderr stay whole
            tqdm.write(f"{now.strftime('%H:%M:%S')} {msg}\n", file=sys.stderr, end="")


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
    the log, and (once measuring starts) the roofline and provenance written into every record,
    and the latency measured so far per (model shape, precision)."""

    sweep: Sweep
    corpus: data.Corpus
    plan: Plan
    mesh: Any
    log: _Log
    summary: SweepSummary
    roof: dict | None = None
    provenance: dict | None = None
    timed: dict = dataclasses.field(default_factory=dict)
    compiled: dict = dataclasses.field(default_factory=dict)  # chunk programs per trunk
    started: float = 0.0  # time.time() before the plan: records newer than this are this run's

    def programs(self, point: TrainPoint) -> dict:
        """The compiled training chunks shared by every trainer of ``point``'s model and
        optimizer (trunk segments and branches: the lr is an input)."""
        tc = point.train
        key = (
            point.model,
            tc.batch_size,
            tc.seq_len,
            tc.compute,
            tc.b1,
            tc.b2,
            tc.weight_decay,
            tc.grad_clip,
        )
        return self.compiled.setdefault(key, {})


def run_sweep(
    sweep: Sweep,
    *,
    force: bool = False,
    retrain: bool = False,
    worker: tuple[int, int] = (0, 1),
    progress: bool = True,
    echo: bool = True,
    train_only: bool = False,
) -> SweepSummary:
    """Run (or resume) ``sweep``; returns what was written, skipped, trained and failed.

    The steps: ``_start`` (check everything, plan, log), then per group of training points (a
    WSD trunk and its branches, or one cosine run) ``_train_group`` (load each point's
    checkpoint, or train it: the trunk to the branch point, then the branch) and, per point,
    ``_measure_point`` (evaluate every precision on the test split, time each, write one record
    per precision).  Raises ``ConfigError`` (before any training) when the output directory holds
    stale records and ``force`` is off, the mesh does not divide the batch, a run would repeat
    the training split more than ``[tokens] max_epochs`` times, or the held-out sets do not fit
    the corpus.

    ``train_only``: train and checkpoint the models still to do, and stop there: no records,
    no latency, no ladder, no roofline (``jscale sweep --train-jobs``: several such processes
    share the directory, each taking the groups the others do not hold, before one plain run
    evaluates and times every model alone).
    """
    t_start = time.perf_counter()
    i, n = worker
    if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
        raise ConfigError(f"worker must be I/N with 0 <= I < N, got {i}/{n}")
    out = sweep.out_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir: {out} is a file, not a directory; name another out_dir")
    held = (
        lock.hold_dir(out, shared=n > 1 or train_only, identity=_sha(sweep.source))
        if _writer()
        else contextlib.nullcontext()
    )
    with held:
        run = _start(sweep, force=force, worker=worker, echo=echo)
        if train_only:
            _train_plan(run, t_start, retrain=retrain, progress=progress)
            return run.summary
        try:
            _run_plan(run, t_start, retrain=retrain, progress=progress)
        finally:
            if _writer():  # results.csv and the other tables are views of the records
                try:
                    export_csv(out)
                except results.ResultsError as e:
                    run.log(f"results.csv not rebuilt: {e}")
    return run.summary


def _run_plan(run: _Run, t_start: float, *, retrain: bool, progress: bool) -> None:
    """Train and measure every group of the plan this process can lock (``jscale.lock``), then
    the latency ladder; the summary is updated in place."""
    sweep, out = run.sweep, run.sweep.out_dir
    if not (run.plan.todo or run.plan.ladder):
        run.summary.seconds = time.perf_counter() - t_start
        return
    run.roof = roofline.roofline() if sweep.latency.enabled else None
    run.provenance = _provenance()
    todo = {id(point): precisions for point, precisions in run.plan.todo}
    n_todo = sum(len(p) for p in todo.values()) + sum(len(p) for *_, p in run.plan.ladder)
    with tqdm(
        total=n_todo,
        unit="rec",
        desc="sweep",
        position=0,
        disable=None if progress else True,
        dynamic_ncols=True,
    ) as bar:
        for group in sweep.groups():
            needed = [p for p in group if id(p) in todo]
            if not needed:
                continue
            with _try_group(out, f"group-{_name(group[0])}") as mine:
                left = _still_to_do(run, needed, todo) if mine else []
                if not mine:
                    run.log(f"{_describe(group[0])}: held by another process, skipped")
                bar.update(sum(len(todo[id(p)]) for p in needed) - sum(len(p) for _, p in left))
                if not left:
                    continue
                precisions = {id(p): pr for p, pr in left}
                for point, trained in _train_group(
                    run, [p for p, _ in left], retrain=retrain, progress=progress
                ):
                    precs = precisions[id(point)]
                    if trained is not None:
                        _measure_point(run, point, *trained, precs, bar)
                    else:
                        bar.update(len(precs))
        _measure_ladder(run, bar)
    s = run.summary
    s.seconds = time.perf_counter() - t_start
    run.log(
        f"done: {s.written} record(s) written, {s.skipped} already done, "
        f"{s.trained} model(s) trained, "
        f"{s.loaded} loaded from checkpoints, {len(s.failed)} failed, {s.seconds:.0f} s"
    )


def _train_plan(run: _Run, t_start: float, *, retrain: bool, progress: bool) -> None:
    """Train and checkpoint every group of the plan this process can lock whose models are not
    checkpointed yet (under ``retrain``: since this run started); measure nothing."""
    todo = {id(point) for point, _ in run.plan.todo}
    for group in run.sweep.groups():
        needed = [p for p in group if id(p) in todo]
        if not needed:
            continue
        with _try_group(run.sweep.out_dir, f"group-{_name(group[0])}") as mine:
            left = [p for p in needed if not _trained_meanwhile(run, p, retrain)] if mine else []
            if not mine:
                run.log(f"{_describe(group[0])}: held by another process, skipped")
            if left:
                for _ in _train_group(run, left, retrain=retrain, progress=progress):
                    pass
    s = run.summary
    s.seconds = time.perf_counter() - t_start
    run.log(
        f"training done: {s.trained} model(s) trained, {s.loaded} already checkpointed, "
        f"{len(s.failed)} failed, {s.seconds:.0f} s"
    )


def _trained_meanwhile(run: _Run, point: TrainPoint, retrain: bool) -> bool:
    """Whether ``point``'s model is checkpointed (under ``retrain``: since this run started)."""
    ckpt = _ckpt_dir(run) / f"{train_key(point, run.plan.hashes[id(point)])}.npz"
    try:
        mtime = ckpt.stat().st_mtime
    except OSError:
        return False
    return not retrain or mtime >= run.started


def _still_to_do(run: _Run, points: list, todo: dict) -> list:
    """``[(point, precisions)]`` of ``points`` whose records are still missing now that this
    process holds their group: another process may have written some since the plan was made
    (under ``force``: since this run started)."""
    left = []
    for point in points:
        need = []
        for prec in todo[id(point)]:
            path = results.record_path(run.sweep.out_dir, point_id(point, prec))
            if _written_meanwhile(
                run, path, _config_hash(run.sweep, run.plan.hashes[id(point)], prec)
            ):
                run.summary.skipped += 1
                continue
            need.append(prec)
        if need:
            left.append((point, need))
    return left


def _written_meanwhile(run: _Run, path: Path, expected: str) -> bool:
    """Whether another process wrote the record at ``path`` (with hash ``expected``) since this
    run started; in a multi-host job process 0 answers for every process."""
    try:
        fresh = path.stat().st_mtime >= run.started and _existing_hash(path) == expected
    except OSError:
        fresh = False
    if jax.process_count() == 1:
        return fresh
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(fresh)))


def check_epochs(sweep: Sweep, corpus: data.Corpus) -> list[tuple[TrainPoint, float]]:
    """Each point's epochs over the training split; ``ConfigError`` naming the worst point when
    one exceeds ``[tokens] max_epochs``."""
    out = [
        (p, p.train.total_steps * p.train.tokens_per_step / len(corpus.train))
        for p in sweep.train_points
    ]
    worst = max(out, key=lambda pe: pe[1], default=None)
    if worst and worst[1] > sweep.max_epochs:
        p, e = worst
        tokens = p.train.total_steps * p.train.tokens_per_step
        need = tokens / sweep.max_epochs
        raise ConfigError(
            f"tokens.max_epochs: {_name(p)} trains {tokens:,} tokens, {e:.1f} epochs of the "
            f"corpus's {len(corpus.train):,}-token training split "
            f"(max_epochs = {sweep.max_epochs:g}); use a corpus of at least {need:,.0f} training "
            "tokens, smaller budgets, or raise tokens.max_epochs to accept repeated data"
        )
    return out


def _start(sweep: Sweep, *, force: bool, worker: tuple[int, int], echo: bool) -> _Run:
    """Check everything a run could fail on before any compute (worker share, mesh, corpus,
    held-out sets, epochs, stale records), make the plan, and log what it will do."""
    i, n = worker
    started = time.time()
    check_memory(sweep)  # seconds, before the corpus loads
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
    check_epochs(sweep, corpus)
    plan = make_plan(sweep, corpus, force=force, worker=worker)
    if plan.stale:
        raise ConfigError(
            f"{sweep.out_dir} holds {len(plan.stale)} record(s) made with a different config "
            f"(e.g. {', '.join(plan.stale[:3])}); "
            "rerun with --force to redo them, or set another out_dir"
        )

    out = sweep.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out, echo)
    if _writer():
        removed = lock.clean_stale_temps(out)
        if removed:
            log(f"removed {len(removed)} temporary file(s) left by a killed run")
        _write_json(out / "manifest.json", manifest(sweep, plan.corpus_id))
        _write_text(out / "sweep.toml", sweep.source)
    if plan.corrupt:
        log(
            f"{len(plan.corrupt)} corrupt record(s) (not a readable JSON record, e.g. "
            f"{plan.corrupt[0]}): redone"
        )
    n_todo = sum(len(p) for _, p in plan.todo)
    share = f" (worker {i + 1} of {n})" if n > 1 else ""
    n_models, n_precisions = len(sweep.train_points), len(sweep.precisions)
    log(
        f"sweep {sweep.name!r}{share}: {n_models} model{'s' * (n_models != 1)} x {n_precisions} "
        f"precision{'s' * (n_precisions != 1)}; {plan.done} record(s) done, "
        f"{n_todo} to run -> {out}"
    )
    for note in sweep.notes:
        log(f"design: {note}")
    if corpus.token_bytes is None:
        log(
            f"note: {corpus.name} gives no token_bytes in tokens.json: eval_bits_per_byte is "
            "NaN (bits per byte need the bytes of text each id stands for; docs/data.md)"
        )
    ours = {point_id(point, p) for point in sweep.train_points for p in sweep.precisions}
    foreign = sorted(results.finished_points(out) - ours)
    if foreign:
        log(
            f"note: {len(foreign)} record(s) in {out} are not points of this config "
            f"(e.g. {foreign[0]}); "
            "they are kept, and left out of results.csv and of `jscale fit` / `figures` "
            "(manifest.json lists this config's records; load_results(..., all_configs=True) "
            "returns every record)"
        )
    return _Run(
        sweep=sweep,
        corpus=corpus,
        plan=plan,
        mesh=mesh,
        log=log,
        summary=SweepSummary(0, plan.done, 0, 0, [], 0.0, out),
        started=started,
    )


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _describe(point: TrainPoint) -> str:
    n = count_params(point.model)["non_embedding"]
    return (
        f"N={n:.3g} (d_model {point.model.d_model} x {point.model.n_layers} layers) "
        f"D={point.budget:.3g} seed {point.seed} lr {point.train.lr:.3g} {point.train_precision}"
    )


def _ckpt_dir(run: _Run) -> Path:
    return run.sweep.out_dir / "checkpoints"


def _state_template(point: TrainPoint):
    params = jax.eval_shape(lambda: model.init_params(point.model, jax.random.key(0)))
    return {
        "params": params,
        "opt_state": jax.eval_shape(train.make_optimizer(point.train).init, params),
    }


class _Trunk:
    """A WSD trunk between branch points: a ``Trainer`` (in memory) or nothing yet; its state is
    saved at every branch point and found there again by a later run."""

    def __init__(self, run: _Run, point: TrainPoint):
        self.run, self.point = run, point
        self.key = (
            f"trunk-{_name(point).split('-D')[0]}-{trunk_hash(point, run.plan.corpus_id)[:12]}"
        )
        self.trainer: train.Trainer | None = None
        self.offset_s = 0.0

    def path(self, step: int) -> Path:
        return _ckpt_dir(self.run) / f"{self.key}-step{step}.npz"

    def state_at(self, step: int, schedule, *, retrain: bool, progress: bool) -> tuple[dict, dict]:
        """(``{"params", "opt_state"}`` as host arrays, meta) of the trunk at ``step``: loaded from
        its checkpoint, or trained there from the latest state at or before it, and saved."""
        run, path = self.run, self.path(step)
        if path.exists() and not retrain:
            return checkpoint.load(path, _state_template(self.point))
        t = self.trainer
        if t is None or t.step > step:
            t = self.trainer = self._resume(step, retrain)
        curve = train.curve_steps(schedule.total_steps, schedule.steps_per_call)
        run.log(f"{_describe(self.point).split(' D=')[0]}: trunk {t.step} -> {step} steps")
        bar = train._progress((step - t.step) * schedule.tokens_per_step, progress, 1)
        try:
            t.advance(step, schedule, curve_at=curve, phase="trunk", bar=bar)
        finally:
            bar.close()
        state = t.host_state()
        meta = {
            "step": t.step,
            "curve": t.curve,
            "train_wall_s": t.train_seconds + self.offset_s,
            "train_compile_s": t.compile_seconds,
        }
        if _writer():
            checkpoint.save(path, state, meta)
        return state, meta

    def _resume(self, step: int, retrain: bool) -> train.Trainer:
        """A trainer at the latest saved trunk state at or before ``step`` (or at step 0)."""
        saved = (
            []
            if retrain
            else sorted(
                (int(p.stem.rsplit("step", 1)[1]), p)
                for p in _ckpt_dir(self.run).glob(f"{self.key}-step*.npz")
            )
        )
        saved = [(s, p) for s, p in saved if s <= step]
        kw, offset = {}, 0.0
        if saved:
            state, meta = checkpoint.load(saved[-1][1], _state_template(self.point))
            kw = dict(**state, step=meta["step"], curve=meta["curve"])
            offset = meta["train_wall_s"]
        self.offset_s = offset  # training time of the saved trunk before this process
        return train.Trainer(
            self.point.model,
            self.point.train,
            self.run.corpus,
            mesh=self.run.mesh,
            compiled=self.run.programs(self.point),
            **kw,
        )


def _train_group(run: _Run, points: list[TrainPoint], *, retrain: bool, progress: bool):
    """Yield ``(point, (params, meta) or None)`` for each of ``points`` (one trunk's budgets in
    ascending order, or one cosine run): loaded from its checkpoint, or trained (the trunk to
    the point's branch step, then its cooldown) and checkpointed; None when training diverged
    (logged and counted as failed; the trunk's later budgets fail with it)."""
    trunk = _Trunk(run, points[0]) if points[0].trunk is not None else None
    failed = None
    for point in points:
        thash = run.plan.hashes[id(point)]
        ckpt = _ckpt_dir(run) / f"{train_key(point, thash)}.npz"
        name = _describe(point)
        if ckpt.exists() and not retrain:
            params, meta = checkpoint.load(ckpt, point.model)
            run.summary.loaded += 1
            run.log(f"{name}: loaded checkpoint {ckpt.name}")
            yield point, (params, meta)
            continue
        if failed is not None:
            run.summary.failed.append(f"{name}: its trunk diverged")
            yield point, None
            continue
        try:
            params, meta = _train_one(run, point, trunk, retrain=retrain, progress=progress)
        except train.TrainingDiverged as e:
            run.log(f"{name}: FAILED, training diverged: {e}")
            run.summary.failed.append(f"{name}: {e}")
            failed = e if trunk is not None else None
            yield point, None
            continue
        meta["train_hash"] = thash
        host_params = (
            params if run.mesh is None else sharding.to_host(params)
        )  # a collective: every process
        if _writer():
            checkpoint.save(ckpt, host_params, meta)
        run.summary.trained += 1
        run.log(
            f"{name}: trained in {meta['train_wall_s']:.1f} s "
            f"(+{meta['train_compile_s']:.1f} s compile), "
            f"final train loss {meta['train_loss_final_nats']:.3f} nats"
        )
        yield point, (params, meta)


def _cpus() -> int:
    """The host CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _train_one(run: _Run, point: TrainPoint, trunk: _Trunk | None, *, retrain, progress):
    """Train one point: a cosine run from scratch, or a WSD branch from its trunk's state at the
    cooldown start.  Returns (params, meta of the ``train`` schema part and the curve)."""
    tc = point.train
    start, kw, curve, offset, compile_s = 0, {}, [], 0.0, 0.0
    if trunk is not None:
        start = tc.cooldown_start
        state, tmeta = trunk.state_at(start, tc, retrain=retrain, progress=progress)
        kw = dict(**state, step=start)
        curve, offset, compile_s = tmeta["curve"], tmeta["train_wall_s"], tmeta["train_compile_s"]
    t = train.Trainer(
        point.model, tc, run.corpus, mesh=run.mesh, curve=curve, compiled=run.programs(point), **kw
    )
    marks = train.curve_steps(tc.total_steps, tc.steps_per_call)
    what = "cooldown" if trunk is not None else "run"
    run.log(
        f"{_describe(point)}: {what} {start} -> {tc.total_steps} steps "
        f"({(tc.total_steps - start) * tc.tokens_per_step:,} tokens, lr {tc.lr:.3g})"
    )
    bar = train._progress((tc.total_steps - start) * tc.tokens_per_step, progress, 1)
    try:
        t.advance(
            tc.total_steps, curve_at=marks, phase=what if trunk is not None else "train", bar=bar
        )
    finally:
        bar.close()
    losses = t.losses_nats()
    k = max(1, min(len(losses), tc.total_steps // 20))
    tokens = tc.total_steps * tc.tokens_per_step
    wall = offset + t.train_seconds
    meta = {
        "train_wall_s": wall,
        "train_compile_s": compile_s + t.compile_seconds,
        "train_cpus": _cpus(),
        "train_tokens": tokens,
        "train_steps": tc.total_steps,
        "train_tokens_per_s": tokens / wall,
        "train_flops": flops_per_token(point.model, tc.seq_len)["train"] * tokens,
        "train_loss_final_nats": float(np.mean(losses[-k:])),
        "curve": t.curve,
    }
    return t.params, meta


def _measure_point(
    run: _Run, point: TrainPoint, params, meta: dict, precisions: list[str], bar
) -> None:
    """Evaluate ``params`` in every precision on the test split (paired) and in the training
    precision on the model-selection split, time each precision (once per model shape: other
    budgets, seeds and lrs of the size carry that measurement), and write one record per
    precision as soon as it is measured."""
    tc = point.train
    corpus = run.corpus
    eval_set = data.eval_batches(corpus.test, tc.seq_len, tc.eval_tokens)
    t0 = time.perf_counter()
    table = evaluate.compare_precisions(
        params,
        point.model,
        eval_set,
        precisions,
        tc.eval_batch_size,
        documents=data.eval_documents(corpus.test, tc.seq_len, tc.eval_tokens, corpus.separator),
        bytes_N=data.window_bytes(eval_set, corpus.token_bytes),
    )
    select = evaluate.evaluate(
        params,
        point.model,
        data.eval_batches(run.corpus.select, tc.seq_len, tc.eval_tokens),
        tc.eval_batch_size,
        policy=tc.compute,
    )
    eval_wall_s = time.perf_counter() - t0
    by_precision = {row.pop("inference_precision"): row for row in table.to_dict("records")}
    if "curve" in meta and _writer():
        n = count_params(point.model)["non_embedding"]
        results.write_curve(
            run.sweep.out_dir,
            train_key(point, run.plan.hashes[id(point)]),
            [{"params_non_embedding": n, **row} for row in meta["curve"]],
        )
    lat_cfg = run.sweep.latency
    for prec in precisions:
        bar.set_postfix_str(point_id(point, prec), refresh=True)
        lat = {}
        if lat_cfg.enabled:
            lat = _latency(run, point, params, prec)
        ev = {
            **by_precision[prec],
            "select_loss_nats": select["eval_loss_nats"],
            "select_loss_se_nats": select["eval_loss_se_nats"],
            "eval_wall_s": eval_wall_s,
        }
        docs = ev.pop("document_losses")
        rec = _record(run, point, prec, meta, ev, lat)
        if _writer():  # the per-document losses first: a record implies its documents exist
            results.write_document_losses(run.sweep.out_dir, rec["point_id"], docs)
            results.write_record(run.sweep.out_dir, rec["point_id"], rec)
        run.summary.written += 1
        bar.update(1)
        msg = (
            f"{_describe(point)} -> {prec}: test loss {ev['eval_loss_nats']:.4f} nats/token "
            f"(SE {ev['eval_loss_se_nats']:.4f}), {ev['eval_bits_per_byte']:.4f} bits/byte"
        )
        if lat:
            msg += (
                f", decode {lat['decode_ms_per_token_median']:.3f} ms/token, "
                f"prefill {lat['prefill_ms_median']:.2f} ms"
            )
        run.log(msg)


def _latency(run: _Run, point: TrainPoint, params, prec: str) -> dict:
    """The latency part of ``point``'s record in ``prec``: measured on the first model of its
    shape this run meets, and carried (with ``latency_from_point_id``) by the others: latency
    depends on the shapes and the precision, not on what the weights learned."""
    key = (point.model, prec)
    if key not in run.timed:
        lat = _time_latency(run, params, point.model, prec)
        run.timed[key] = {
            **lat,
            "latency_weights": "trained",
            "latency_from_point_id": point_id(point, prec),
        }
    return run.timed[key]


def _time_latency(run: _Run, params, cfg, prec: str) -> dict:
    """``measure_latency`` of float32 ``params`` of ``cfg`` in ``prec`` with the sweep's
    ``[latency]`` settings, in the formulation the autotune picks (keeping what the config
    pins); the dict holds the latency columns and the formulation's provenance."""
    lat_cfg = run.sweep.latency
    form, how = autotune.choice(
        prec,
        cfg,
        kernel_layout=lat_cfg.kernel_layout,
        min_rows=lat_cfg.min_rows,
        cache_bytes=run.roof.get("cache_bytes"),
    )
    lat = latency.measure_latency(
        params,
        cfg,
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
    return {**lat, **how}


def _measure_ladder(run: _Run, bar) -> None:
    """Time every (ladder size, precision) still to do on random weights, one record each
    (``OUT/ladder/``), smallest first."""
    if not run.plan.ladder:
        return
    sweep = run.sweep
    t0 = time.perf_counter()
    for target, cfg, precisions in run.plan.ladder:
        with _try_group(sweep.out_dir, f"ladder-N{round(target)}") as mine:
            left = [
                p
                for p in precisions
                if mine
                and not _written_meanwhile(
                    run,
                    results.record_path(sweep.out_dir, ladder_id(target, p), results.LADDER),
                    _ladder_hash(sweep, cfg, p),
                )
            ]
            if not mine:
                run.log(f"ladder N={target:.3g}: held by another process, skipped")
            if mine:
                run.summary.skipped += len(precisions) - len(left)
            bar.update(len(precisions) - len(left))
            if left:
                _time_ladder_size(run, target, cfg, left, bar)
    run.log(f"latency ladder: {time.perf_counter() - t0:.0f} s")


def _time_ladder_size(run: _Run, target: float, cfg, precisions: list[str], bar) -> None:
    """Time one ladder size in ``precisions`` on random weights, one record each."""
    sweep = run.sweep
    params = jax.block_until_ready(ladder.random_params(cfg, jax.random.key(0)))
    counts = count_params(cfg)
    for prec in precisions:
        pid = ladder_id(target, prec)
        bar.set_postfix_str(pid, refresh=True)
        lat = _time_latency(run, params, cfg, prec)
        rec = {
            "point_id": pid,
            "sweep_name": sweep.name,
            "config_hash": _ladder_hash(sweep, cfg, prec),
            "size_target_params_non_embedding": target,
            "inference_precision": prec,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **{k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "d_ff")},
            **{k: getattr(cfg, k) for k in ("vocab_size", "max_seq_len", "tie_embeddings")},
            "params_total": counts["total"],
            "params_non_embedding": counts["non_embedding"],
            "params_embedding": counts["embedding"],
            **lat,
            "latency_weights": "random",
            **run.provenance,
        }
        schema.check_columns(rec, where=pid, table="ladder")
        if _writer():
            results.write_record(sweep.out_dir, pid, rec, results.LADDER)
        run.summary.written += 1
        bar.update(1)
        run.log(
            f"ladder N={counts['non_embedding']:.3g} (d_model {cfg.d_model} x "
            f"{cfg.n_layers} layers, random weights) -> {prec} [{lat['kernel_layout']}:"
            f"{lat['matmul_min_rows']}, {lat['formulation_class']}]: decode "
            f"{lat['decode_ms_per_token_median']:.3f} ms/token "
            f"({lat['decode_efficiency']:.2f} of the roofline), prefill "
            f"{lat['prefill_ms_median']:.2f} ms"
        )


@contextlib.contextmanager
def _try_group(out_dir, key: str):
    """``lock.try_group``; in a multi-host job only process 0 takes the lock and every process
    follows its answer (the processes of one job train each model together)."""
    if jax.process_count() == 1:
        with lock.try_group(out_dir, key) as mine:
            yield mine
        return
    from jax.experimental import multihost_utils

    with lock.try_group(out_dir, key) if _writer() else contextlib.nullcontext(True) as mine:
        yield bool(multihost_utils.broadcast_one_to_all(np.int32(mine)))


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
            "train_tokens_target": point.budget,
            "compute_budget_flops": point.compute_budget,
            "schedule": t.schedule,
            "seed": point.seed,
            "train_precision": point.train_precision,
            "inference_precision": prec,
            "corpus": run.corpus.name,
            "tokenizer": run.corpus.tokenizer,
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
            "warmup_tokens": t.total_warmup_steps * t.tokens_per_step,
            "cooldown_tokens": t.cooldown_steps * t.tokens_per_step,
        },
    )
    trained = schema.part(
        "train",
        {
            **{k: meta[k] for k in schema.columns("train") if k in meta},
            "train_flops_6nd": 6.0 * counts["non_embedding"] * meta["train_tokens"],
            "epochs": meta["train_tokens"] / len(run.corpus.train),
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
    """Rebuild the views of ``out_dir``'s records, each atomically: ``results.csv`` (the records
    of the config in ``manifest.json``), ``curves.csv`` (loss curves), ``document_losses.csv``
    and ``latency_ladder.csv`` when the sweep has them.  A sweep run calls it at its end, also
    when it fails or has nothing to do, so the views never lag the records.  Returns the path of
    ``results.csv`` (not written while there is no record)."""
    tables = {}
    if any((Path(out_dir) / results.RECORDS).glob("*.json")):
        tables["results.csv"] = results.load_results(out_dir)
    if (Path(out_dir) / results.CURVES).is_dir():
        tables["curves.csv"] = results.load_curves(out_dir)
    docs = results.load_document_losses(out_dir)
    if docs is not None:
        tables["document_losses.csv"] = docs
    lad = results.load_ladder(out_dir) if (Path(out_dir) / results.LADDER).is_dir() else None
    if lad is not None:
        tables["latency_ladder.csv"] = lad
    for name, df in tables.items():
        path = Path(out_dir) / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return Path(out_dir) / "results.csv"
