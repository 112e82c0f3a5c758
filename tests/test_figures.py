"""Paper figures and the fit table render headless from synthetic results tables (a known
law plus small noise): several precisions, one, latency columns missing, too few sizes for
a fit; every file is a valid non-empty PNG / PDF; the Pareto frontier matches brute force;
the tables carry the right groups and recover the known exponent; the CLI writes them."""

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from jscale import figures
from jscale.cli import main
from jscale.results import write_record

SIZES = (2e4, 6e4, 2e5, 6e5, 2e6, 6e6)
ALPHA = {"fp32": 0.30, "bf16": 0.30, "int8": 0.28, "w8a8": 0.26}
E, A = 1.2, 40.0


def synthetic_results(precisions=("fp32", "bf16", "int8", "w8a8"), sizes=SIZES, seeds=(0, 1, 2),
                      latency=True, rng=0) -> pd.DataFrame:
    """A results table: loss E + A N^-alpha with 0.5% noise per precision, latency a fixed
    floor plus a linear term, memory from bytes per parameter; one row per point."""
    rng = np.random.default_rng(rng)
    bpp = {"fp32": 4, "bf16": 2, "int8": 1.1, "w8a8": 1.05}
    rows = []
    for n in sizes:
        for s in seeds:
            for p in precisions:
                a = ALPHA.get(p, 0.25)
                loss = (E + A * n ** -a) * (1 + 0.005 * rng.standard_normal())
                dec = (0.4 + 2e-6 * n * bpp.get(p, 2) / 4) * (1 + 0.03 * rng.standard_normal())
                pre = (3.0 + 6e-5 * n * (1 + bpp.get(p, 2)) / 5) * (1 + 0.03 * rng.standard_normal())
                r = dict(inference_precision=p, train_precision="fp32", seed=s, params_non_embedding=int(n),
                         params_total=int(n + 16384), train_tokens=int(20 * n), eval_loss_nats=loss,
                         eval_loss_se_nats=0.004, eval_bits_per_byte=loss / np.log(2),
                         weight_bytes=int(n * bpp.get(p, 2)), kv_cache_bytes=int(2 * 256 * n ** 0.5 * 4),
                         batch=1, prompt_tokens=128, gen_tokens=32, device_kind="cpu")
                if latency:
                    r.update(decode_ms_per_token_median=dec, decode_ms_per_token_q1=0.97 * dec,
                             decode_ms_per_token_q3=1.04 * dec, prefill_ms_median=pre, prefill_ms_q1=0.97 * pre,
                             prefill_ms_q3=1.03 * pre, decode_bound_ms_per_token=1e-6 * n * bpp.get(p, 2) / 4,
                             prefill_bound_ms=2e-5 * n)
                rows.append(r)
    return pd.DataFrame(rows)
