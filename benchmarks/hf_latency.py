r"""Batch-1 greedy decode and prefill: Hugging Face transformers GPT-2 beside jscale.

Both sides run the same shapes (d_model x n_layers, d_ff = 4 d_model, head width --head-dim,
vocabulary 256, tied embeddings) from random weights, on the same machine, in one process, one
after the other. What is timed, on each side, is the same work:

* prefill: one forward of a --prompt token prompt that fills the KV cache, and the argmax of its
  last logits (the first generated token);
* decode: --gen single-token forwards, each reading the cache, appending to it and taking the
  argmax of its logits as the next input. Per-token decode latency = decode time / --gen.

jscale: ``jscale.latency.measure_latency`` (ahead-of-time compiled prefill and a ``lax.scan``
decode, the formulation ``jscale.autotune.choose`` picks for each precision; 2 warm-up runs,
then --repeats timed runs) in fp32, bf16, int8 (weight-only) and w8a8.

Hugging Face: ``GPT2LMHeadModel`` in float32 eager PyTorch (its default attention
implementation), under ``torch.inference_mode()``, with ``torch.set_num_threads(os.cpu_count())``.
The greedy loop is written here so prefill and decode are timed apart: a prefill forward with
``use_cache=True``, then --gen forwards of the argmax token with the returned cache (HF's default
``DynamicCache``, as ``generate`` uses). Logits are computed for the last position only
(``logits_to_keep=1``, as ``generate`` does). 2 warm-up runs, then --repeats timed runs; this is
done twice per shape, once before and once after jscale's runs, and the pass with the lower median
is reported (decode and prefill each), so the peer is not disadvantaged by noise.

The architectures differ outside the matmuls (GPT-2: LayerNorm, biases, learned positions;
jscale: RMSNorm, no biases, RoPE); the matmul shapes and the cache are the same. N is jscale's
non-embedding parameter count. Ratios are jscale ms / HF ms: lower is better.

Run it on an idle machine. With as many torch threads as CPUs, any other busy process slows
PyTorch's OpenMP loop by up to 100x (2-core VM, 2026-12-02) while jscale barely moves; the
report prints how busy the CPUs were before the start, both HF passes, and a warning when they
disagree by more than 1.5x. ``--hf-threads`` sets torch's thread count (default: all CPUs).

Install the peer in a separate venv (torch and transformers are not jscale dependencies)::

    python3 -m venv /work/hfvenv
    /work/hfvenv/bin/pip install -e .
    /work/hfvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /work/hfvenv/bin/pip install transformers

Run (from the repository root)::

    /work/hfvenv/bin/python benchmarks/hf_latency.py --shapes 128x4,256x4,512x8,1024x12 \
        --prompt 64 --gen 64 --repeats 5 --precisions fp32,bf16,int8,w8a8 --out hf_latency.md
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import os
import platform
import shlex
import sys
import time

import jax
import numpy as np

from jscale import latency, model, precision, roofline
from jscale.config import ModelConfig, count_params

WARMUP = 2
HF_PASSES = 2
# Formulation columns of a latency record (read with .get: the set may grow).
FORM_KEYS = ("kernel_layout", "matmul_min_rows", "matmul_fused_rows", "matvec", "formulation")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        d, sep, n_layers = item.strip().lower().partition("x")
        if not sep or not d.isdigit() or not n_layers.isdigit():
            raise SystemExit(f"--shapes: expected d_modelxn_layers (e.g. 256x4), got {item!r}")
        shapes.append((int(d), int(n_layers)))
    return shapes


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_busy(seconds: float = 1.0) -> float:
    """Percent of all CPUs busy over the next ``seconds`` (from /proc/stat; NaN elsewhere)."""

    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t1, i1 = snap()
        time.sleep(seconds)
        t2, i2 = snap()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return 100.0 * (1 - (i2 - i1) / max(1, t2 - t1))


def stats(x_ms) -> dict[str, float]:
    q1, med, q3 = np.percentile(np.asarray(x_ms), [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3)}


# ---------------------------------------------------------------- Hugging Face side


def import_peer():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise SystemExit(
            f"{e}: this benchmark needs torch and transformers beside jscale, e.g.\n"
            "  pip install torch --index-url https://download.pytorch.org/whl/cpu transformers"
        ) from None
    transformers.logging.set_verbosity_error()
    return torch, transformers


def hf_model(torch, transformers, d: int, n_layers: int, head_dim: int, n_positions: int):
    cfg = transformers.GPT2Config(
        vocab_size=256,
        n_positions=n_positions,
        n_embd=d,
        n_layer=n_layers,
        n_head=d // head_dim,
        n_inner=4 * d,
        # GPT-2's defaults (50256) lie outside a 256-token vocabulary and make transformers
        # warn; greedy decoding of a fixed length uses neither.
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).to(torch.float32).eval()


def hf_pass(torch, lm, prompt, gen: int, repeats: int) -> dict:
    """WARMUP + repeats greedy generations by hand; the last ``repeats`` timed (ms)."""
    params = inspect.signature(lm.forward).parameters
    # transformers 5.x renames past_key_values -> cache (the old name warns, then goes).
    cache_kw = "cache" if "cache" in params else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def cache_of(out):
        c = getattr(out, "cache", None)
        return c if c is not None else out.past_key_values

    prefill_ms, decode_ms = [], []
    with torch.inference_mode():
        for run in range(WARMUP + repeats):
            t0 = time.perf_counter()
            out = lm(input_ids=prompt, use_cache=True, **extra)
            past = cache_of(out)
            tok = out.logits[:, -1:].argmax(-1)
            t1 = time.perf_counter()
            for _ in range(gen):
                out = lm(input_ids=tok, use_cache=True, **{cache_kw: past}, **extra)
                past = cache_of(out)
                tok = out.logits[:, -1:].argmax(-1)
            t2 = time.perf_counter()
            if run >= WARMUP:
                prefill_ms.append(1e3 * (t1 - t0))
                decode_ms.append(1e3 * (t2 - t1) / gen)
    return {"prefill": stats(prefill_ms), "decode": stats(decode_ms)}


def best(passes: list[dict], key: str) -> dict:
    return min((p[key] for p in passes), key=lambda s: s["median"])


# ---------------------------------------------------------------- jscale side


def jscale_cfg(d: int, n_layers: int, head_dim: int, max_len: int) -> ModelConfig:
    return ModelConfig(
        d_model=d,
        n_layers=n_layers,
        n_heads=d // head_dim,
        d_ff=4 * d,
        vocab_size=256,
        max_seq_len=max_len,
        tie_embeddings=True,
    )


# ---------------------------------------------------------------- report


def spread(s: dict | None, digits: int = 3) -> str:
    if s is None:
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['q1']:.{digits}f}..{s['q3']:.{digits}f})"


def ratio(a: float | None, b: float) -> str:
    return "n/a" if a is None or not b else f"{a / b:.3g}"


def jstat(r: dict | None, name: str) -> dict | None:
    if r is None or r.get(f"{name}_median") is None:
        return None
    return {k: r.get(f"{name}_{k}", float("nan")) for k in ("median", "q1", "q3")}


def report(rows: list[dict], precs: list[str], header: list[str]) -> str:
    out = list(header)
    out += [
        "",
        "Decode, ms per token, median (q1..q3); ratios are jscale / HF (lower is better).",
        "",
        "| d_model x layers | N non-emb | HF ms/token (q1..q3) | "
        + " | ".join(f"jscale {p}" if i == 0 else p for i, p in enumerate(precs))
        + " | fastest / HF | fp32 / HF | fp32 decode efficiency |",
        "|" + "---|" * (6 + len(precs)),
    ]
    for row in rows:
        hf = row["hf_decode"]["median"]
        cells = {p: jstat(row["jscale"].get(p), "decode_ms_per_token") for p in precs}
        timed = {p: s["median"] for p, s in cells.items() if s is not None}
        fastest = min(timed, key=timed.get) if timed else None
        fp32 = row["jscale"].get("fp32")
        eff = fp32.get("decode_efficiency") if fp32 else None
        out.append(
            f"| {row['shape']} | {row['n']:.3g} | {spread(row['hf_decode'])} | "
            + " | ".join(spread(cells[p]) for p in precs)
            + f" | {ratio(timed.get(fastest), hf)}{f' ({fastest})' if fastest else ''}"
            + f" | {ratio(timed.get('fp32'), hf)}"
            + f" | {'n/a' if eff is None else f'{100 * eff:.0f}%'} |"
        )
    out += [
        "",
        "HF decode median per pass (ms/token): "
        + "; ".join(
            f"{row['shape']}: " + ", ".join(f"{m:.3f}" for m in row["hf_passes_decode_median"])
            for row in rows
        ),
    ]
    noisy = [
        row["shape"]
        for row in rows
        if max(row["hf_passes_decode_median"]) > 1.5 * min(row["hf_passes_decode_median"])
    ]
    if noisy:
        out.append(
            f"WARNING: HF's passes differ by more than 1.5x at {', '.join(noisy)}: another "
            "process ran meanwhile, or too few repeats; rerun on an idle machine (and with "
            "more --repeats) before quoting these ratios."
        )
    out += [
        "",
        "Prefill, ms per prompt, median (q1..q3).",
        "",
        "| d_model x layers | HF prefill ms (q1..q3) | "
        + " | ".join(f"jscale {p}" if i == 0 else p for i, p in enumerate(precs))
        + " | fastest / HF | fp32 / HF |",
        "|" + "---|" * (4 + len(precs)),
    ]
    for row in rows:
        hf = row["hf_prefill"]["median"]
        cells = {p: jstat(row["jscale"].get(p), "prefill_ms") for p in precs}
        timed = {p: s["median"] for p, s in cells.items() if s is not None}
        fastest = min(timed, key=timed.get) if timed else None
        out.append(
            f"| {row['shape']} | {spread(row['hf_prefill'], 2)} | "
            + " | ".join(spread(cells[p], 2) for p in precs)
            + f" | {ratio(timed.get(fastest), hf)}{f' ({fastest})' if fastest else ''}"
            + f" | {ratio(timed.get('fp32'), hf)} |"
        )
    out += [
        "",
        "jscale per precision: formulation, decode roofline bound (ms/token) and efficiency.",
        "",
        "| d_model x layers | " + " | ".join(precs) + " |",
        "|" + "---|" * (1 + len(precs)),
    ]
    for row in rows:
        cells = []
        for p in precs:
            r = row["jscale"].get(p)
            if r is None:
                cells.append("n/a")
                continue
            form = ", ".join(f"{k}={r[k]}" for k in FORM_KEYS if r.get(k) is not None)
            bound, eff = r.get("decode_bound_ms_per_token"), r.get("decode_efficiency")
            extra = []
            if bound is not None:
                extra.append(f"bound {bound:.3f}")
            if eff is not None:
                extra.append(f"eff {100 * eff:.0f}%")
            cells.append("; ".join(x for x in (form, ", ".join(extra)) if x) or "-")
        out.append(f"| {row['shape']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="128x4,256x4,512x8,1024x12", help="d_modelxn_layers,...")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (prefill)")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens (decode steps)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs after 2 warm-ups")
    ap.add_argument("--precisions", default="fp32,bf16,int8,w8a8", help="jscale precisions")
    ap.add_argument("--head-dim", type=int, default=64, help="attention head width")
    ap.add_argument(
        "--hf-threads", type=int, default=None, help="torch threads (default: os.cpu_count())"
    )
    ap.add_argument("--out", help="also write the report to this markdown file")
    a = ap.parse_args()

    shapes = parse_shapes(a.shapes)
    precs = [p.strip() for p in a.precisions.split(",") if p.strip()]
    for p in precs:
        precision.get_policy(p)  # fails early, by name, on an unknown precision
    for name in ("prompt", "gen", "repeats", "head_dim"):
        if getattr(a, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    for d, n_layers in shapes:
        if d % a.head_dim or n_layers < 1:
            raise SystemExit(f"shape {d}x{n_layers}: d_model must be a multiple of --head-dim")
    max_len = max(1024, a.prompt + a.gen)

    torch, transformers = import_peer()
    threads = a.hf_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    roof = roofline.roofline()
    header = [
        f"# jscale vs Hugging Face GPT-2: batch-1 greedy latency ({a.prompt} prompt tokens, "
        f"{a.gen} generated)",
        "",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- versions: python {platform.python_version()}, jax {jax.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}",
        f"- threads: torch {torch.get_num_threads()}, jax devices {jax.device_count()} "
        f"({jax.devices()[0].platform})",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- timing: {WARMUP} warm-ups + {a.repeats} timed runs per measurement; HF timed in "
        f"{HF_PASSES} passes (before and after jscale), best median reported",
        f"- machine before start: {cpu_busy():.0f}% of CPUs busy over 1 s, load average "
        f"{os.getloadavg()[0]:.2f} (any other process skews both sides, HF's OpenMP most)",
    ]

    rows = []
    for d, n_layers in shapes:
        shape = f"{d} x {n_layers}"
        cfg = jscale_cfg(d, n_layers, a.head_dim, max_len)
        lm = hf_model(torch, transformers, d, n_layers, a.head_dim, max_len)
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, 256, (1, a.prompt), generator=gen)
        attn = getattr(lm.config, "_attn_implementation", None) or "default"
        passes = []
        log(f"{shape}: HF pass 1")
        passes.append(hf_pass(torch, lm, prompt, a.gen, a.repeats))
        params = model.init_params(cfg, jax.random.key(0))
        results = {}
        for p in precs:
            log(f"{shape}: jscale {p}")
            results[p] = latency.measure_latency(
                params,
                cfg,
                p,
                batch=1,
                prompt_tokens=a.prompt,
                gen_tokens=a.gen,
                repeats=a.repeats,
                roof=roof,
            )
        del params
        for i in range(1, HF_PASSES):
            log(f"{shape}: HF pass {i + 1}")
            passes.append(hf_pass(torch, lm, prompt, a.gen, a.repeats))
        del lm
        rows.append(
            {
                "shape": shape,
                "n": count_params(cfg)["non_embedding"],
                "hf_decode": best(passes, "decode"),
                "hf_prefill": best(passes, "prefill"),
                "hf_passes_decode_median": [p["decode"]["median"] for p in passes],
                "jscale": results,
            }
        )
        log(
            f"{shape}: HF decode medians per pass "
            + ", ".join(f"{m:.3f}" for m in rows[-1]["hf_passes_decode_median"])
            + " ms/token"
        )

    header.append(f"- HF attention implementation: {attn}; cache: DynamicCache")
    header.append(f"- load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    text = report(rows, precs, header)
    print(text, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
        log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
