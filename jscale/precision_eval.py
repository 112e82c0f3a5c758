"""What each precision costs a trained model: held-out loss, its change, bytes, logit error.

``compare_precisions`` converts float32 params to each policy (``jscale.precision``) and
evaluates all of them on the same fixed held-out sequences, so loss differences are paired
and their standard error is small.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pandas as pd

from jscale import model, precision, train
from jscale.config import ModelConfig


@functools.partial(jax.jit, static_argnames=("cfg", "policy"))
def _logits(params, cfg: ModelConfig, tokens_BxT, policy):
    return model.apply(params, cfg, tokens_BxT, policy=policy)


def compare_precisions(params, cfg: ModelConfig, eval_set_NxT1: np.ndarray,
                       policies=("fp32", "bf16", "int8", "w8a8"), batch_size: int = 32,
                       logit_sequences: int = 8) -> pd.DataFrame:
    """One row per policy (names or ``Policy`` objects; first row: fp32, the reference,
    always included).  A policy with non-default layers is labelled e.g.
    ``int8[down,embed,out,qkv,up]``.

    Columns: ``precision``; ``eval_loss_nats`` (mean next-token loss, nats/token) and
    ``eval_loss_se_nats`` (SE over sequences); ``eval_bits_per_byte``;
    ``delta_loss_nats`` (minus fp32's, on the same sequences) with ``delta_loss_se_nats``
    (paired SE over sequences) and ``delta_loss_pct`` (100 x delta / fp32 loss);
    ``param_bytes`` (real bytes of the converted params pytree) and ``param_bytes_vs_fp32``;
    ``logit_rel_err_mean`` / ``logit_rel_err_max``: ``||z - z_fp32||_2 / ||z_fp32||_2`` of the
    logit vector at each position of the first ``logit_sequences`` held-out sequences, mean
    and max over positions.
    """
    pols = [precision.POLICIES["fp32"]] + [p for p in map(precision.get_policy, policies)
                                           if p != precision.POLICIES["fp32"]]
    seqs = eval_set_NxT1[:logit_sequences, :-1]
    rows, ref = [], None
    for pol in pols:
        qp = precision.convert_params(params, pol)
        per_seq = train.sequence_losses(qp, cfg, eval_set_NxT1, batch_size, policy=pol)
        z = np.asarray(_logits(qp, cfg, seqs, pol), np.float64)
        if ref is None:
            ref = {"per_seq": per_seq, "z": z, "bytes": precision.param_bytes(qp)}
        rel = np.linalg.norm(z - ref["z"], axis=-1) / np.linalg.norm(ref["z"], axis=-1)
        loss, loss_se = train.mean_and_se(per_seq)
        delta, delta_se = train.mean_and_se(per_seq - ref["per_seq"])
        rows.append({
            "precision": pol.label,
            "eval_loss_nats": loss,
            "eval_loss_se_nats": loss_se,
            "eval_bits_per_byte": loss / math.log(2),
            "delta_loss_nats": delta,
            "delta_loss_se_nats": delta_se,
            "delta_loss_pct": 100 * delta / ref["per_seq"].mean(),
            "param_bytes": precision.param_bytes(qp),
            "param_bytes_vs_fp32": precision.param_bytes(qp) / ref["bytes"],
            "logit_rel_err_mean": rel.mean(),
            "logit_rel_err_max": rel.max(),
        })
    return pd.DataFrame(rows)
