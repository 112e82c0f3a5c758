"""The ``jscale`` command line: ``sweep``, ``fit``, ``figures``, ``train``, ``ladder``,
``bench latency``, ``info``.

Errors in user input (configs, corpora, unreadable tables and checkpoints) print one line,
``jscale: error: ...``, naming the field or path, and exit with status 2.  A full disk prints one
line saying so and exits with status 1 (what was written is whole: rerun to resume), as does a
sweep in which a model failed (``jscale: failed: ...``, one line per model).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from pathlib import Path

from jscale.config import LATENCY_REPEATS, LATENCY_WARMUP, ConfigError, is_positive_int
from jscale.results import ResultsError


def _auto_or_positive_int(s: str) -> int | str:
    return "auto" if s == "auto" else _positive_int(s)


def _precisions(s: str) -> list[str]:
    """The policy names of a ``--precisions`` list, or a ConfigError naming the flag."""
    from jscale import precision

    try:
        return [precision.get_policy(p.strip()).name for p in s.split(",") if p.strip()]
    except precision.PrecisionError as e:
        raise ConfigError(f"--precisions: {e}") from None


def _size(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r} (use e.g. 1e6)") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {s!r}")
    return v


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if not is_positive_int(v):
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}")
    return v


def _count(s: str) -> int:
    v = _size(s)
    if v != int(v):
        raise argparse.ArgumentTypeError(f"must be a whole number, got {s!r}")
    return int(v)


def _worker(s: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be I/N (e.g. 1/4: the first of four workers), got {s!r}"
        ) from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"must be I/N with 1 <= I <= N, got {s!r}")
    return i - 1, n


def _mesh_spec(s: str) -> dict[str, int]:
    from jscale.sharding import parse_mesh

    try:
        return parse_mesh(s)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _make_mesh(spec: dict[str, int] | None):
    """The mesh of ``--mesh`` (None without it); a device count that does not fit is a
    ConfigError."""
    if spec is None:
        return None
    from jscale import sharding

    return sharding.make_mesh(**spec)


def _peak_gib(cfg, tc) -> float:
    """The largest of the training, evaluation and timing memory estimates, GiB."""
    from jscale import memory

    return (
        max(memory.train_bytes(cfg, tc), memory.eval_bytes(cfg, tc), memory.latency_bytes(cfg))
        / 2**30
    )


def _print_plan(s, args) -> None:
    """``jscale sweep --plan``: the grid, its FLOPs and epochs, what is done and what is left,
    and what the design cannot identify."""
    from jscale import data, memory
    from jscale import sweep as sw
    from jscale.config import count_params, flops_per_token
    from jscale.sweep_config import check_memory

    corpus = data.load_corpus(s.corpus_path, val_percent=s.val_percent)
    epochs = {id(p): e for p, e in sw.check_epochs(s, corpus)}  # refuses too many epochs
    plan = sw.make_plan(s, corpus, force=args.force, worker=args.worker)
    todo = {id(point): p for point, p in plan.todo}
    print(
        f"sweep {s.name!r} -> {s.out_dir}: {len(s.train_points)} models "
        f"({len(s.groups())} runs) x {len(s.precisions)} precisions; {plan.done} record(s) done, "
        f"{sum(map(len, todo.values())) + sum(len(p) for *_, p in plan.ladder)} to run, "
        f"{len(plan.stale)} stale"
    )
    print(
        "| target N | N non-emb | d_model x layers | heads | seed | lr | tokens | tokens/N | "
        "C (FLOPs) | epochs | schedule | train TFLOP | peak GiB | precisions to run |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    total = separate = 0.0
    for group in s.groups():
        steps_done = 0  # a WSD trunk is trained once: each budget adds its cooldown
        for point in group:
            tc = point.train
            n = count_params(point.model)["non_embedding"]
            per_token = flops_per_token(point.model, tc.seq_len)["train"]
            tok = tc.total_steps * tc.tokens_per_step
            if point.trunk is None:
                new_steps = tc.total_steps
            else:
                new_steps = max(tc.cooldown_start - steps_done, 0) + tc.cooldown_steps
                steps_done = max(steps_done, tc.cooldown_start)
            fl = per_token * new_steps * tc.tokens_per_step
            total, separate = total + fl, separate + per_token * tok
            c = f"{point.compute_budget:.3g}" if point.compute_budget else "-"
            print(
                f"| {point.size_target:.3g} | {n:,} | "
                f"{point.model.d_model} x {point.model.n_layers} | {point.model.n_heads} | "
                f"{point.seed} | {tc.lr:.3g} | {tok:,} | {tok / n:.3g} | {c} | "
                f"{epochs[id(point)]:.3g} | {tc.schedule} | {fl / 1e12:.3g} | "
                f"{_peak_gib(point.model, tc):.2g} | {', '.join(todo.get(id(point), [])) or '-'} |"
            )
    print(
        f"training: {total / 1e12:.4g} TFLOP (analytic, 3 x forward matmuls)"
        + (
            f"; {separate / 1e12:.4g} TFLOP as separate runs ({separate / total:.2f}x)"
            if separate > total * 1.001
            else ""
        )
    )
    need = max(p.train.total_steps * p.train.tokens_per_step for p in s.train_points)
    unit = "bytes" if corpus.tokenizer == "bytes" else f"tokens of {corpus.tokenizer}"
    print(
        f"corpus: {corpus.name}: {len(corpus.train):,} training {unit}; the largest run trains "
        f"{need:,} ({need / len(corpus.train):.3g} epochs; max_epochs = {s.max_epochs:g})"
    )
    worst = max(epochs.values())
    if worst > 1:
        print(
            f"warning: the largest run repeats the training split {worst:.2f} times "
            f"(max_epochs = {s.max_epochs:g})"
        )
    for note in s.notes:
        print(f"design: {note}")
    try:
        check_memory(s)
    except ConfigError as e:  # planned here, maybe run on a bigger machine
        print(f"warning: on this device the sweep would stop: {e}")
    if s.ladder:
        lad = {(t, c): p for t, c, p in plan.ladder}
        print(
            f"\nlatency ladder: {len(s.ladder)} random-weight models x "
            f"{len(s.ladder_precisions)} precisions ({', '.join(s.ladder_precisions)}), "
            f"timed (batch {s.latency.batch}, prompt {s.latency.prompt_tokens}, "
            f"{s.latency.gen_tokens} generated), not trained"
        )
        print("| target N | N non-emb | d_model x layers | heads | peak GiB | precisions to run |")
        print("|---:|---:|---|---:|---:|---|")
        for target, cfg in s.ladder:
            todo_l = lad.get((target, cfg), [])
            print(
                f"| {target:.3g} | {count_params(cfg)['non_embedding']:,} | "
                f"{cfg.d_model} x {cfg.n_layers} | {cfg.n_heads} | "
                f"{memory.latency_bytes(cfg) / 2**30:.2f} | {', '.join(todo_l) or '-'} |"
            )


CPU_SHARE_ENV = "JSCALE_CPU_SHARE"  # "J/N": run on the J-th of N slices of the allowed CPUs


def _train_jobs(args) -> None:
    """Run ``args.train_jobs`` ``jscale sweep --train-only`` processes side by side and wait for
    them.  Each takes the training groups the others do not hold (``jscale.lock``), pinned to
    its share of this process's CPUs where the OS allows (``JSCALE_CPU_SHARE``).  A job that
    fails is reported; the measuring run that follows trains whatever is still missing."""
    import subprocess

    cmd = [sys.executable, "-m", "jscale", "sweep", str(args.config), "--train-only", "--quiet"]
    cmd += ["--out", str(args.out)] if args.out else []
    cmd += ["--force"] if args.force else []
    cmd += ["--retrain"] if args.retrain else []
    jobs = [
        subprocess.Popen(cmd, env={**os.environ, CPU_SHARE_ENV: f"{j}/{args.train_jobs}"})
        for j in range(args.train_jobs)
    ]
    try:
        codes = [p.wait() for p in jobs]
    except BaseException:  # interrupted: stop the jobs too (their checkpoints are whole)
        for p in jobs:
            p.terminate()
        raise
    for j, rc in enumerate(codes):
        if rc:
            print(
                f"jscale: training job {j + 1} of {len(jobs)} exited with status {rc}; "
                "this run trains what it left",
                file=sys.stderr,
            )


def cmd_sweep(args) -> int:
    from jscale import sweep as sw
    from jscale.sweep_config import load_sweep

    if args.retrain and not args.force:
        raise ConfigError("--retrain only applies with --force (redo points that are already done)")
    if args.train_jobs > 1 and (args.worker or args.train_only):
        raise ConfigError(
            "--train-jobs runs its own training processes: not with --worker or --train-only"
        )
    args.worker = args.worker or (0, 1)
    s = load_sweep(args.config, out_dir=args.out)  # validates the whole file before any compute
    if args.plan:
        _print_plan(s, args)
        return 0
    retrain = args.retrain
    if args.train_jobs > 1:
        import jax

        if s.mesh is not None or jax.default_backend() != "cpu":
            raise ConfigError(
                "--train-jobs splits the host's CPUs between training processes: not for a "
                f"[mesh] sweep or on {jax.default_backend()} (the jobs would share its devices)"
            )
        _train_jobs(args)
        retrain = False  # the jobs retrained what --retrain asked for; measure their checkpoints
    r = sw.run_sweep(
        s,
        force=args.force,
        retrain=retrain,
        worker=args.worker,
        progress=not args.quiet,
        train_only=args.train_only,
    )
    if args.train_only:
        for f in r.failed:
            print(f"jscale: failed: {f}", file=sys.stderr)
        return 1 if r.failed else 0
    path = s.out_dir / "results.csv"  # rebuilt from the records by every run (run_sweep)
    if path.exists():
        print(f"results: {path} ({r.written} new record(s), {r.skipped} already there)")
    for f in r.failed:  # e.g. a model that diverged: the others ran; the rerun retries it
        print(f"jscale: failed: {f}", file=sys.stderr)
    return 1 if r.failed else 0


def cmd_train(args) -> int:
    from jscale import data, evaluate, memory, sharding, train
    from jscale.config import ModelConfig, TrainConfig, config_for_params, count_params

    vocab = data.corpus_vocab_size(args.corpus)  # a token corpus brings its own vocabulary
    if args.d_model is not None:
        if args.size is not None:
            raise ConfigError(
                "give --size (a ladder model) or --d-model/--n-layers/--n-heads, not both"
            )
        cfg = ModelConfig(
            d_model=args.d_model,
            n_layers=2 if args.n_layers is None else args.n_layers,
            n_heads=1 if args.n_heads is None else args.n_heads,
            max_seq_len=args.seq_len,
            tie_embeddings=not args.untied,
            vocab_size=vocab,
        )
    else:
        if args.n_layers is not None or args.n_heads is not None:
            raise ConfigError(
                "--n-layers and --n-heads need --d-model (an explicit shape); "
                "a ladder model (--size) chooses its own"
            )
        cfg = config_for_params(
            args.size or 1e5,
            max_seq_len=args.seq_len,
            tie_embeddings=not args.untied,
            vocab_size=vocab,
        )
    if args.steps is not None and args.tokens is not None:
        raise ConfigError("give --steps or --tokens (a token budget), not both")
    budget = (
        {"steps": args.steps} if args.steps is not None else {"tokens": args.tokens or 2_000_000}
    )
    tc = TrainConfig(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        seed=args.seed,
        eval_tokens=args.eval_tokens,
        compute=args.compute,
        **budget,
    )
    policies = _precisions(args.precisions)
    mesh = _make_mesh(args.mesh)
    sharding.check_batch(mesh, tc.batch_size, "--batch-size")
    memory.check_training(cfg, tc, memory.device_bytes(), "--size / --batch-size / --seq-len")
    corpus = data.load_corpus(args.corpus, val_percent=args.val_percent)
    n = count_params(cfg)
    unit = "bytes" if corpus.tokenizer == "bytes" else f"tokens ({corpus.tokenizer})"
    files = f" ({corpus.n_files_train} / {corpus.n_files_val} files)" * (corpus.n_files_val >= 0)
    if corpus.token_bytes is None:
        files += "; no token_bytes in tokens.json, so bits per byte are NaN"
    print(
        f"corpus   {corpus.name}: {len(corpus.train):,} train / {len(corpus.val):,} held-out "
        f"{unit}{files}"
    )
    print(
        f"model    d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} "
        f"d_ff={cfg.d_ff}: "
        f"{n['non_embedding']:,} non-embedding + {n['embedding']:,} embedding params"
    )
    print(
        f"training {tc.total_steps} step{'s' * (tc.total_steps != 1)} x "
        f"{tc.tokens_per_step:,} tokens = {tc.total_steps * tc.tokens_per_step:,} "
        f"tokens, peak lr {tc.lr}, seed {tc.seed}"
    )
    if mesh is not None:
        import jax

        print(
            f"mesh     {sharding.mesh_shape_str(mesh)} over {mesh.size} "
            f"{jax.devices()[0].platform} device(s), "
            f"{jax.process_count()} process(es)"
        )
    r = train.train(cfg, tc, corpus, progress=not args.quiet, mesh=mesh)
    e = r.eval
    print(
        f"compile  {r.compile_seconds:.1f} s; train {r.train_seconds:.1f} s, "
        f"{r.tokens_per_second:,.0f} tokens/s, "
        f"{r.tokens_per_second * r.flops_per_token_train / 1e9:.1f} GFLOP/s (analytic train FLOPs)"
    )
    print(
        f"held-out loss {e['eval_loss_nats']:.4f} ± {e['eval_loss_se_nats']:.4f} nats/token = "
        f"{e['eval_bits_per_byte']:.4f} ± {e['eval_bits_per_byte_se']:.4f} bits/byte "
        f"on {e['eval_tokens']:,} tokens "
        f"(unigram entropy {corpus.unigram_entropy_bits() / corpus.bytes_per_token():.3f} "
        "bits/byte)"
    )
    if policies:
        import jax

        params = sharding.to_host(r.params) if jax.process_count() > 1 else r.params
        eval_set = data.eval_batches(corpus.test, tc.seq_len, tc.eval_tokens)  # the headline's
        df = evaluate.compare_precisions(
            params,
            cfg,
            eval_set,
            policies,
            tc.eval_batch_size,
            bytes_N=data.window_bytes(eval_set, corpus.token_bytes),
        )
        print(
            f"\npost-training precision of the {tc.compute}-trained params (same held-out tokens; "
            "delta vs fp32 with its paired SE):"
        )
        print(
            "| precision | loss nats/token | bits/byte | delta nats (SE) | delta % | param bytes "
            "| vs fp32 | logit rel err mean / max |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for x in df.itertuples():
            print(
                f"| {x.inference_precision} | {x.eval_loss_nats:.4f} | "
                f"{x.eval_bits_per_byte:.4f} | "
                f"{x.delta_loss_vs_fp32_nats:+.5f} "
                f"({x.delta_loss_vs_fp32_se_nats:.5f}) | {x.delta_loss_vs_fp32_pct:+.2f}% | "
                f"{x.param_bytes:,} | {x.param_bytes_vs_fp32:.3f} | "
                f"{x.logit_rel_err_mean:.4f} / {x.logit_rel_err_max:.4f} |"
            )
    return 0


def cmd_ladder(args) -> int:
    from jscale.config import config_for_params, count_params, ladder_targets

    targets = ladder_targets(
        args.lo, args.hi, args.per_decade
    )  # validates before printing anything
    print(
        "| target N | achieved N | achieved/target | d_model | n_layers | n_heads | "
        "d_model/n_layers | total params |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        c = config_for_params(t)
        n = count_params(c)
        print(
            f"| {t:.3g} | {n['non_embedding']:,} | {n['non_embedding'] / t:.3f} | "
            f"{c.d_model} | {c.n_layers} | "
            f"{c.n_heads} | {c.d_model / c.n_layers:.0f} | {n['total']:,} |"
        )
    return 0


def cmd_autotune(args) -> int:
    from jscale import autotune, formulation, precision, roofline

    fmts = [precision.get_policy(p.strip()).fmt for p in args.precisions.split(",") if p.strip()]
    cache = roofline.roofline().get("cache_bytes")
    for fmt in fmts:
        for klass in formulation.SHAPE_CLASSES:
            autotune.timings(fmt, klass, cache, refresh=args.refresh)
    keys = {f"{f}|{k}" for f in fmts for k in formulation.SHAPE_CLASSES}
    print(autotune.markdown({k: v for k, v in autotune.cached().items() if k in keys}), end="")
    return 0


def cmd_info(args) -> int:
    import flax
    import jax
    import optax

    from jscale import data, roofline, runtime

    print(
        f"jscale {__import__('jscale').__version__}  jax {jax.__version__}  "
        f"flax {flax.__version__}  "
        f"optax {optax.__version__}  python {sys.version.split()[0]}"
    )
    print(f"devices  {', '.join(f'{d.platform}:{d.device_kind}' for d in jax.devices())}")
    print(f"cache    {runtime.cache_dir()}  (set JSCALE_CACHE_DIR to move it)")
    print("roofline (measured once per device and cached; --refresh re-measures):")
    r = roofline.roofline(refresh=args.refresh)
    print(
        f"  dense fp32 matmul  {r['matmul_flops_per_s'] / 1e9:8.1f} GFLOP/s  "
        f"(median of 10; min {r['matmul_flops_per_s_min'] / 1e9:.1f}, "
        f"max {r['matmul_flops_per_s_max'] / 1e9:.1f}; "
        f"{r['matmul_n']}^3)"
    )
    for dt in ("bf16", "int8"):
        k = f"matmul_{dt}_flops_per_s"
        print(
            f"  dense {dt} matmul  {r[k] / 1e9:8.1f} GFLOP/s  "
            f"(median of 10; min {r[k + '_min'] / 1e9:.1f}, "
            f"max {r[k + '_max'] / 1e9:.1f}; {'fp32' if dt == 'bf16' else 'int32'} accumulation)"
        )
    print(
        f"  read bandwidth     {r['read_bandwidth_bytes_per_s'] / 1e9:8.1f} GB/s     "
        f"(median of 10; min {r['read_bandwidth_bytes_per_s_min'] / 1e9:.1f}, "
        f"max {r['read_bandwidth_bytes_per_s_max'] / 1e9:.1f}; "
        f"{r['bandwidth_mib']} MiB read-only, best method "
        f"{r['read_bandwidth_method']}; the latency bounds use this one)"
    )
    print(
        f"  read+write bandw.  {r['bandwidth_bytes_per_s'] / 1e9:8.1f} GB/s     "
        f"(median of 10; min {r['bandwidth_bytes_per_s_min'] / 1e9:.1f}, "
        f"max {r['bandwidth_bytes_per_s_max'] / 1e9:.1f}; "
        f"{r['bandwidth_mib']} MiB in-place scale, reads + writes counted)"
    )
    print(f"  measured {r['measured_at']}")
    c = data.load_corpus()
    print(
        f"default corpus {c.name}: {len(c.train):,} train / {len(c.val):,} held-out bytes, "
        f"unigram entropy {c.unigram_entropy_bits():.3f} bits/byte"
    )
    return 0


def cmd_tokenize(args) -> int:
    from jscale import tokenize

    meta = tokenize.tokenize(
        args.source,
        args.out,
        vocab_size=args.vocab_size,
        tokenizer=args.tokenizer,
        val_percent=args.val_percent,
        text_column=args.text_column,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    tokens, text = meta["tokens"], meta["text_bytes"]
    print(
        f"{args.out}: {meta['tokenizer']} (vocab {meta['vocab_size']:,}, {meta['dtype']}): "
        f"{tokens['train']:,} train / {tokens['val']:,} held-out tokens, "
        f"{text['train'] / max(tokens['train'], 1):.2f} bytes/token; "
        f'train on it with --corpus {args.out} or [corpus] path = "{args.out}"'
    )
    return 0


def cmd_bench_latency(args) -> int:
    import jax

    from jscale import autotune, latency, model, roofline
    from jscale.config import config_for_params, count_params

    policies = _precisions(args.precisions)
    seq = args.prompt + args.gen
    cfgs = [
        config_for_params(s, max_seq_len=max(seq, 8)) for s in args.sizes
    ]  # validates sizes first
    mesh = _make_mesh(args.mesh)
    roof = roofline.roofline()
    print(
        f"device {roof['device_kind']} ({roof['host_cpus']} host CPUs), jax {jax.__version__}; "
        f"roofline: read {roof['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
        f"fp32 {roof['matmul_flops_per_s'] / 1e9:.0f} / "
        f"bf16 {roof['matmul_bf16_flops_per_s'] / 1e9:.0f} / "
        f"int8 {roof['matmul_int8_flops_per_s'] / 1e9:.0f} GFLOP/s"
    )
    print(
        f"batch {args.batch}, prompt {args.prompt} tokens, {args.gen} generated; "
        f"median (q1..q3) of {args.repeats} runs; "
        f"eff = roofline bound / measured; kernel layout {args.kernel_layout}, "
        f"min rows {args.min_rows}\n"
    )
    print(
        "| N non-emb | precision | layout | rows | weight MB | prefill ms | prefill bound ms | "
        "eff | decode ms/token | decode bound ms | eff | decode tokens/s | compile s |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for cfg in cfgs:
        params = model.init_params(cfg, jax.random.key(0))  # latency does not depend on the values
        counts = count_params(cfg)
        for pol in policies:
            form, how = autotune.choice(
                pol,
                cfg,
                kernel_layout=args.kernel_layout,
                min_rows=args.min_rows,
                cache_bytes=roof.get("cache_bytes"),
            )
            r = latency.measure_latency(
                params,
                cfg,
                pol,
                batch=args.batch,
                prompt_tokens=args.prompt,
                gen_tokens=args.gen,
                repeats=args.repeats,
                roof=roof,
                mesh=mesh,
                form=form,
            )
            r = {
                "inference_precision": pol,
                "params_non_embedding": counts["non_embedding"],
                "params_total": counts["total"],
                **r,
                **how,
                **roofline.device_info(),
            }
            rows.append(r)
            print(
                f"| {r['params_non_embedding']:.3g} | {pol} | {r['kernel_layout']} | "
                f"{r['matmul_min_rows']} | "
                f"{r['weight_bytes'] / 1e6:.1f} | "
                f"{r['prefill_ms_median']:.2f} "
                f"({r['prefill_ms_q1']:.2f}..{r['prefill_ms_q3']:.2f}) | "
                f"{r['prefill_bound_ms']:.2f} {r['prefill_bound_kind'][0]} | "
                f"{r['prefill_efficiency']:.2f} | "
                f"{r['decode_ms_per_token_median']:.3f} ({r['decode_ms_per_token_q1']:.3f}.."
                f"{r['decode_ms_per_token_q3']:.3f}) | {r['decode_bound_ms_per_token']:.3f} "
                f"{r['decode_bound_kind'][0]} | {r['decode_efficiency']:.2f} | "
                f"{r['decode_tokens_per_s']:,.0f} | "
                f"{r['compile_prefill_s'] + r['compile_decode_s']:.1f} |",
                flush=True,
            )
        del params
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"\nwrote {len(rows)} rows to {args.csv}")
    return 0


def _formats(s: str) -> tuple[str, ...]:
    f = tuple(x.strip().lower() for x in s.split(",") if x.strip())
    bad = [x for x in f if x not in ("png", "pdf", "svg")]
    if bad or not f:
        raise argparse.ArgumentTypeError(f"formats are png, pdf, svg (comma-separated), got {s!r}")
    return f


def cmd_fit(args) -> int:
    from jscale import figures

    df = _load(args)
    fits = figures.fit_all(
        df,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        k=args.holdout,
        documents=_documents_beside(args.results),
        ladder=_ladder_beside(args.results, args.all_configs),
    )
    if not fits.fits:
        raise ResultsError(f"{args.results}: no law could be fitted: {'; '.join(fits.notes)}")
    print(figures.fit_table_markdown(fits), end="")
    return 0


def _curves_beside(results_path):
    """The loss curves of a sweep directory (``curves/``), or the ``curves.csv`` exported next to
    a ``results.csv``; None when there are none."""
    from jscale.results import CURVES, load_curves

    p = Path(results_path)
    if p.is_dir():
        return load_curves(p) if (p / CURVES).is_dir() else None
    beside = p.with_name("curves.csv")
    return load_curves(beside) if beside.is_file() else None


def _documents_beside(results_path):
    """The held-out loss per document of a sweep directory (``document_losses/``), or the
    ``document_losses.csv`` exported next to a ``results.csv``; None when there are none."""
    from jscale.results import load_document_losses

    p = Path(results_path)
    return load_document_losses(p if p.is_dir() else p.with_name("document_losses.csv"))


def _load(args):
    """The results ``jscale fit`` / ``figures`` work on, with a line to stderr saying what was
    loaded and what was left out (records of other configs)."""
    from jscale.results import load_results

    notes = []
    df = load_results(
        args.results, check=args.check, all_configs=args.all_configs, log=notes.append
    )
    what = f"sweep {df['sweep_name'].iloc[0]!r}" if df.get("sweep_name") is not None else "table"
    if args.all_configs and "sweep_name" in df and df["sweep_name"].nunique() > 1:
        what = f"{df['sweep_name'].nunique()} sweeps (--all-configs)"
    print(f"loaded {len(df)} record(s) of {what} from {args.results}", file=sys.stderr)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return df


def _ladder_beside(results_path, all_configs: bool = False):
    """The latency ladder of a sweep directory (``ladder/``), or the ``latency_ladder.csv``
    exported next to a ``results.csv``; None when there is none."""
    from jscale.results import load_ladder

    p = Path(results_path)
    if p.is_dir():
        return load_ladder(p, all_configs=all_configs)
    beside = p.with_name("latency_ladder.csv")
    return load_ladder(beside) if beside.is_file() else None


def cmd_figures(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed

    from jscale import figures

    df = _load(args)
    r = figures.render_all(
        df,
        args.out,
        formats=args.format,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        k=args.holdout,
        curves=_curves_beside(args.results),
        documents=_documents_beside(args.results),
        ladder=_ladder_beside(args.results, args.all_configs),
    )
    if len(r.skipped) == len(figures.FIGURES):
        raise ResultsError(
            f"{args.results}: no figure could be drawn: {'; '.join(why for _, why in r.skipped)}"
        )
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one (not None/False), lists as written on the line."""

    def _get_help_string(self, action):
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or "%(default)" in (action.help or ""):
            return action.help
        shown = ",".join(map(str, d)) if isinstance(d, (tuple, list)) else d
        return f"{action.help or ''} (default: {str(shown).replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other jscale error (exit 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    fmt = _Help
    p = _Parser(prog="jscale", description="Scaling laws of LM inference in JAX.")
    p.add_argument(
        "--version", action="version", version=f"jscale {__import__('jscale').__version__}"
    )
    sub = p.add_subparsers(
        dest="command",
        metavar="{sweep,fit,figures,train,ladder,bench,autotune,info}",
        required=True,
    )

    sw = sub.add_parser(
        "sweep",
        help="run (or resume) a sweep config: sizes x precisions x seeds -> results",
        formatter_class=fmt,
    )
    sw.add_argument("config", help="sweep config (TOML), e.g. experiments/quick.toml")
    sw.add_argument("--out", help="output directory instead of the config's out_dir")
    sw.add_argument(
        "--force",
        action="store_true",
        help="redo every point (re-evaluate and re-time; reuses checkpoints whose training config "
        "is unchanged)",
    )
    sw.add_argument("--retrain", action="store_true", help="with --force: retrain the models too")
    sw.add_argument(
        "--worker",
        type=_worker,
        metavar="I/N",
        help="run only this worker's share (models with index %% N == I-1), "
        "e.g. $SLURM_ARRAY_TASK_ID/N",
    )
    sw.add_argument(
        "--train-jobs",
        type=_positive_int,
        default=1,
        metavar="J",
        help="train the models in J processes side by side first, each on its share of the CPUs "
        "(small models leave cores idle), then evaluate and time every model in this process "
        "alone; 1: train and measure each model in turn",
    )
    sw.add_argument(
        "--train-only",
        action="store_true",
        help="train and checkpoint the models still to do, write no records (what each "
        "--train-jobs process runs; a later plain run evaluates and times them)",
    )
    sw.add_argument(
        "--plan",
        action="store_true",
        help="print the points, their cost and what is left; run nothing",
    )
    sw.add_argument("--quiet", action="store_true", help="no progress bars (the log still prints)")
    sw.set_defaults(fn=cmd_sweep)

    t = sub.add_parser(
        "train", help="train one model and print its held-out loss", formatter_class=fmt
    )
    g = t.add_argument_group("model (a ladder size, or an explicit shape)")
    g.add_argument(
        "--size", type=_size, help="target non-embedding params of a ladder model (default 1e5)"
    )
    g.add_argument("--d-model", type=int, help="explicit shape instead of --size: d_model")
    g.add_argument(
        "--n-layers", type=int, help="explicit shape: layers (with --d-model; default 2)"
    )
    g.add_argument("--n-heads", type=int, help="explicit shape: heads (with --d-model; default 1)")
    g.add_argument("--untied", action="store_true", help="untied input embedding and output head")
    g = t.add_argument_group("training")
    g.add_argument("--steps", type=int, help="optimizer steps (instead of --tokens)")
    g.add_argument(
        "--tokens", type=_count, help="token budget, rounded up to whole steps (default 2e6)"
    )
    g.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    g.add_argument(
        "--seq-len",
        type=int,
        default=256,
        help="tokens per training sequence (bytes, for a text corpus)",
    )
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    g.add_argument("--seed", type=int, default=0, help="the one seed of init and batches")
    g.add_argument(
        "--eval-tokens", type=_count, default=262_144, help="held-out tokens to evaluate on"
    )
    g.add_argument(
        "--corpus",
        help="text file or directory, or token files (a directory with tokens.json: jscale "
        "tokenize); default: Python's standard library source",
    )
    g.add_argument(
        "--val-percent",
        type=float,
        default=2.0,
        help="share of the corpus held out, in %% (a token directory has its own val split)",
    )
    g.add_argument(
        "--compute",
        default="fp32",
        choices=["fp32", "bf16"],
        help="training precision: fp32, or bf16 mixed precision (fp32 master weights)",
    )
    g.add_argument(
        "--precisions",
        default="fp32,bf16,int8,w8a8",
        help="comma-separated post-training precisions to evaluate the trained params in "
        "(fp32, bf16, int8, w8a8, int4, int4-g32, int4-g128, fp8, fp8a8; empty for none)",
    )
    g.add_argument(
        "--mesh",
        type=_mesh_spec,
        metavar="data=D,fsdp=F",
        help="train sharded over a device mesh (jscale.sharding): batch split over data x fsdp, "
        "params and optimizer state split along fsdp; -1 = all remaining devices",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    tk = sub.add_parser(
        "tokenize",
        help="train or load a byte-level BPE and write token files (extra: jscale[tokenize])",
        formatter_class=fmt,
    )
    tk.add_argument(
        "source",
        nargs="?",
        help="text file or directory, .parquet file or directory, or a `datasets.save_to_disk` "
        "directory (default: Python's standard library source)",
    )
    tk.add_argument("--out", required=True, help="directory for the token files (created)")
    tk.add_argument(
        "--vocab-size", type=_count, default=8192, help="BPE vocabulary to train (with specials)"
    )
    tk.add_argument(
        "--tokenizer", help="an existing tokenizer.json to load instead of training one"
    )
    tk.add_argument(
        "--val-percent", type=float, default=2.0, help="share of documents held out, in %%"
    )
    tk.add_argument(
        "--text-column", default="text", help="the text column of Parquet / datasets sources"
    )
    tk.set_defaults(fn=cmd_tokenize)

    lad = sub.add_parser(
        "ladder",
        help="print the size ladder: target vs achieved non-embedding params",
        formatter_class=fmt,
    )
    lad.add_argument("--lo", type=_size, default=1e4, help="smallest target non-embedding params")
    lad.add_argument("--hi", type=_size, default=1e9, help="largest target")
    lad.add_argument("--per-decade", type=int, default=2, help="sizes per factor of 10")
    lad.set_defaults(fn=cmd_ladder)

    b = sub.add_parser("bench", help="benchmarks: `jscale bench latency`")
    bsub = b.add_subparsers(dest="bench", metavar="{latency}", required=True)
    bl = bsub.add_parser(
        "latency",
        help="prefill and KV-cache decode latency vs size and precision, beside the roofline",
        formatter_class=fmt,
    )
    bl.add_argument(
        "--sizes",
        nargs="+",
        type=_size,
        default=[1e5, 1e6, 1e7, 1e8],
        help="target non-embedding params (ladder models, random init)",
    )
    bl.add_argument(
        "--precisions", default="fp32,bf16,int8,w8a8", help="comma-separated precisions"
    )
    bl.add_argument("--batch", type=_positive_int, default=1, help="sequences decoded together")
    bl.add_argument("--prompt", type=_positive_int, default=128, help="prompt tokens")
    bl.add_argument(
        "--gen", type=_positive_int, default=32, help="generated tokens (decode steps per run)"
    )
    bl.add_argument(
        "--repeats",
        type=_positive_int,
        default=LATENCY_REPEATS,
        help=f"timed runs (after {LATENCY_WARMUP} warm-up runs)",
    )
    bl.add_argument(
        "--kernel-layout",
        choices=("auto", "in_out", "out_in"),
        default="auto",
        help="how projection kernels are stored: auto = the layout each precision's decode "
        "measured fastest in on this backend; in_out = as trained; out_in = transposed",
    )
    bl.add_argument(
        "--min-rows",
        type=_auto_or_positive_int,
        default="auto",
        help="pad each projection's tokens to at least this many rows: auto = the fastest "
        "measured for each precision and kernel layout on this backend; 1 = no padding",
    )
    bl.add_argument("--csv", help="also write every measured field to this CSV file")
    bl.add_argument(
        "--mesh",
        type=_mesh_spec,
        metavar="data=D,fsdp=F",
        help="time sharded over a device mesh (docs/scale-out.md); bounds are for the whole mesh",
    )
    bl.set_defaults(fn=cmd_bench_latency)

    for name, hlp in (
        ("fit", "fit the scaling laws to a results table and print the fit table (Markdown)"),
        ("figures", "render the paper figures (PNG, PDF) and the fit table from a results table"),
    ):
        f = sub.add_parser(name, help=hlp, formatter_class=fmt)
        f.add_argument(
            "results",
            metavar="RESULTS_DIR",
            help="a sweep's output directory (records/*.json), or a .csv/.jsonl results table",
        )
        if name == "figures":
            f.add_argument(
                "--out",
                required=True,
                help="directory to write the figures and fits.md/fits.tex to",
            )
            f.add_argument(
                "--format",
                type=_formats,
                default=("png", "pdf"),
                help="comma-separated file formats: png, pdf, svg",
            )
        f.add_argument(
            "--bootstrap", type=_positive_int, default=1000, help="bootstrap resamples per fit"
        )
        f.add_argument("--seed", type=int, default=0, help="bootstrap seed")
        f.add_argument(
            "--holdout",
            type=_positive_int,
            default=2,
            help="largest sizes held out in the extrapolation check",
        )
        f.add_argument(
            "--no-check",
            dest="check",
            action="store_false",
            help="read a table whose columns are not jscale's schema (e.g. published data)",
        )
        f.add_argument(
            "--all-configs",
            action="store_true",
            help="fit every record of the directory, not only those of the config that last ran "
            "there (manifest.json), nor only one sweep of a table",
        )
        f.set_defaults(fn=cmd_fit if name == "fit" else cmd_figures)

    a = sub.add_parser(
        "autotune",
        help="time the candidate formulations on this device (once; cached) and print them",
        formatter_class=fmt,
    )
    a.add_argument("--precisions", default="fp32,bf16,int8,w8a8", help="comma-separated")
    a.add_argument("--refresh", action="store_true", help="measure again, ignoring the cache")
    a.set_defaults(fn=cmd_autotune)

    i = sub.add_parser("info", help="device, versions, measured roofline, default corpus")
    i.add_argument("--refresh", action="store_true", help="re-measure the roofline")
    i.set_defaults(fn=cmd_info)
    return p


# Errors that are the user's to fix: one line, exit 2.  Looked up only in modules already
# imported (an exception can only come from a loaded module), so `jscale fit` never pays
# for importing the model and training code.
_USER_ERRORS = {
    "jscale.config": "ConfigError",
    "jscale.data": "CorpusError",
    "jscale.precision": "PrecisionError",
    "jscale.results": "ResultsError",
    "jscale.checkpoint": "CheckpointError",
    "jscale.analysis": "AnalysisError",
    "jscale.figures": "FigureError",
    "jscale.runtime": "CacheError",
    "jscale.tokenize": "TokenizeError",
}


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no space, or over quota


def _loaded(names: dict[str, str]) -> tuple[type, ...]:
    return tuple(getattr(sys.modules[m], n) for m, n in names.items() if m in sys.modules)


def _pin_cpus() -> None:
    """Restrict this process to its share of the CPUs when ``JSCALE_CPU_SHARE`` is ``J/N``
    (set by ``--train-jobs``), before JAX sizes its thread pools.  CPUs ``J, J + N, ...`` of
    the allowed set; nothing where the OS has no affinity call or there are fewer CPUs than N."""
    share = os.environ.get(CPU_SHARE_ENV)
    if not share:
        return
    j, _, n = share.partition("/")
    if not (j.isdigit() and n.isdigit() and 0 <= int(j) < int(n)):
        raise ConfigError(f"{CPU_SHARE_ENV} must be J/N with 0 <= J < N, got {share!r}")
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= int(n):
        os.sched_setaffinity(0, cpus[int(j) :: int(n)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jscale.runtime import enable_compilation_cache

    try:
        _pin_cpus()
        if args.command in ("train", "sweep"):  # a no-op unless one host of a multi-host job
            from jscale.sharding import maybe_initialize_distributed

            maybe_initialize_distributed()
        enable_compilation_cache()
        return args.fn(args)
    except _loaded(_USER_ERRORS) as e:
        print(f"jscale: error: {e}", file=sys.stderr)
        return 2
    except _loaded({"jscale.train": "TrainingDiverged"}) as e:
        print(f"jscale: training diverged: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        print(
            f"jscale: error: the disk is full ({e.strerror or 'no space left on device'}"
            f"{f': {e.filename}' if e.filename else ''}); what was written before is whole "
            "(records, checkpoints and caches are written atomically): free some space and rerun "
            "the same command to resume",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # the device ran out of memory: say so in one line, not a traceback
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(
            f"jscale: out of device memory: {str(e).splitlines()[0][:300]}; use a smaller model, "
            "--batch-size or --seq-len",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("jscale: interrupted", file=sys.stderr)
        return 130
