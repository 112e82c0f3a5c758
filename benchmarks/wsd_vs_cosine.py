"""Is a WSD cooldown branch as good as a separate cosine run to the same budget?

For each size and token budget D: train one cosine run to D (warm-up, cosine decay to
``min_lr_ratio``) and one warmup-stable-decay run to D (the same warm-up, constant lr, then the
cooldown over the last ``--cooldown-frac`` of the steps).  A WSD run to D is exactly what a
sweep's cooldown branch from a shared trunk computes (``tests/test_train.py`` checks they are
equal bitwise), so its loss is the branch's.  Both runs see the same batches (seed, step) and
start from the same init.  With several ``--lrs``, each schedule is compared at its own best lr,
chosen on the model-selection split (a schedule that decays earlier may want a higher peak).
Reports each test loss and the paired difference WSD - cosine with its standard error over the
test split's sequences (the same sequences for both: the paired SE holds only the held-out
sampling noise, not seed-to-seed noise), and the tokens a sweep over all budgets trains with WSD
(the longest trunk plus the cooldowns) against separate runs.

    python benchmarks/wsd_vs_cosine.py                          # the quick sweep's shapes
    python benchmarks/wsd_vs_cosine.py --sizes 6e3 2.5e4 --tokens-per-param 20 80 --shape linear
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform

from jscale import data, evaluate, train
from jscale.config import TrainConfig, config_for_params, count_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[6e3, 2.5e4])
    ap.add_argument("--tokens-per-param", type=float, nargs="+", default=[20, 80])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    ap.add_argument("--cooldown-frac", type=float, default=0.2)
    ap.add_argument("--shape", default="1-sqrt", choices=["1-sqrt", "linear"])
    ap.add_argument("--eval-tokens", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    corpus = data.load_corpus(None)
    test = data.eval_batches(corpus.test, a.seq_len, a.eval_tokens)
    select = data.eval_batches(corpus.select, a.seq_len, a.eval_tokens)
    print(
        f"# WSD branch vs cosine run, {datetime.date.today()}, {platform.processor() or 'cpu'}, "
        f"batch {a.batch_size} x {a.seq_len}, peak lrs {a.lrs}, cooldown {a.cooldown_frac} "
        f"({a.shape}), seed {a.seed}, {test.shape[0]} test sequences\n"
    )
    print(
        "| N non-emb | d x L | tokens | tokens/N | cosine lr | cosine nats | WSD lr | WSD nats | "
        "WSD - cosine | paired SE | z |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    wsd_tokens = separate_tokens = 0
    for target in a.sizes:
        cfg = config_for_params(target, head_dim=8, n_layers=2, max_seq_len=a.seq_len)
        n = count_params(cfg)["non_embedding"]
        budgets = sorted(round(r * n) for r in a.tokens_per_param)
        base = TrainConfig(
            tokens=budgets[0],
            batch_size=a.batch_size,
            seq_len=a.seq_len,
            lr=a.lrs[0],
            seed=a.seed,
            eval_tokens=a.eval_tokens,
            steps_per_call=20,
        )
        warmup = base.total_warmup_steps  # the smallest budget's, as a sweep's trunk uses
        trunk_end = 0
        for tokens in budgets:
            cos = dataclasses.replace(base, tokens=tokens, warmup_steps=warmup)
            wsd = dataclasses.replace(
                cos, schedule="wsd", cooldown_frac=a.cooldown_frac, cooldown_shape=a.shape
            )
            losses, best = {}, {}
            for name, tc in (("cosine", cos), ("wsd", wsd)):
                scored = []
                for lr in a.lrs:  # each schedule at its best lr on the model-selection split
                    r = train.train(
                        cfg,
                        dataclasses.replace(tc, lr=lr),
                        corpus,
                        progress=False,
                        evaluate_heldout=False,
                    )
                    sel = evaluate.sequence_losses(r.params, cfg, select, 32).mean()
                    scored.append((sel, lr, r.params))
                _, best[name], params = min(scored, key=lambda t: t[0])
                losses[name] = evaluate.sequence_losses(params, cfg, test, 32)
            diff = losses["wsd"] - losses["cosine"]
            mean, se = evaluate.mean_and_se(diff)
            print(
                f"| {n:.3g} | {cfg.d_model} x {cfg.n_layers} | {tokens:,} | {tokens / n:.0f} | "
                f"{best['cosine']:g} | {losses['cosine'].mean():.4f} | {best['wsd']:g} | "
                f"{losses['wsd'].mean():.4f} | {mean:+.4f} | "
                f"{se:.4f} | {mean / se:+.1f} |",
                flush=True,
            )
            separate_tokens += cos.total_steps * cos.tokens_per_step
            wsd_tokens += (max(wsd.cooldown_start - trunk_end, 0) + wsd.cooldown_steps) * (
                wsd.tokens_per_step
            )
            trunk_end = max(trunk_end, wsd.cooldown_start)
    print(
        f"\ntokens trained for all budgets: WSD trunk + cooldowns {wsd_tokens:,}, separate runs "
        f"{separate_tokens:,} ({separate_tokens / wsd_tokens:.2f}x)"
    )


if __name__ == "__main__":
    main()
