"""Held-out loss with honest standard errors, and what each precision costs a trained model.

``evaluate`` reports one model's loss on a fixed held-out set; ``compare_precisions``
converts float32 params to each policy (``jscale.precision``) and evaluates all of them on the
same sequences, so loss differences are paired and their standard error is small.  The
standard errors are over held-out sequences: they include the sampling noise of the held-out
set, not seed-to-seed or data-order noise.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pandas as pd

from jscale import model, precision, sharding
from jscale.config import ModelConfig

LN2 = math.log(2.0)


@functools.partial(jax.jit, static_argnames=("cfg", "policy"))
def _sequence_mean_losses(params, cfg: ModelConfig, batch_BxT1, policy):
    return model.token_losses(params, cfg, batch_BxT1, policy).mean(axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "policy"))
def _logits(params, cfg: ModelConfig, tokens_BxT, policy):
    return model.apply(params, cfg, tokens_BxT, policy=policy)


def sequence_losses(
    params,
    cfg: ModelConfig,
    batches_NxT1: np.ndarray,
    batch_size: int = 32,
    policy="fp32",
    mesh=None,
) -> np.ndarray:
    """Mean next-token loss (nats) of each of N fixed sequences ``[N, T+1]``: float64 ``[N]``.
    With a ``mesh`` each batch is split over its devices when they divide ``batch_size``
    (else replicated); the params keep whatever placement they have."""
    policy = precision.get_policy(policy)

    def put(b):
        return b

    if mesh is not None:
        divides = batch_size % sharding.batch_devices(mesh) == 0
        where = sharding.batch_sharding(mesh) if divides else sharding.replicated(mesh)

        def put(b):
            return sharding.put(b, where)

    out = []
    for start in range(0, len(batches_NxT1), batch_size):
        b = batches_NxT1[start : start + batch_size]
        pad = batch_size - len(b)
        if pad:  # keep one compiled shape; padded rows are dropped below
            b = np.concatenate([b, np.repeat(b[-1:], pad, axis=0)])
        losses_B = sharding.gather(_sequence_mean_losses(params, cfg, put(b), policy))
        out.append(np.asarray(losses_B, dtype=np.float64)[: batch_size - pad])
    return np.concatenate(out)


def mean_and_se(x: np.ndarray) -> tuple[float, float]:
    """Mean of ``x`` and its standard error ``std(ddof=1) / sqrt(n)`` (nan when n < 2)."""
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def clustered_se(x: np.ndarray, groups: np.ndarray) -> float:
    """Standard error of ``x.mean()`` when the values of one group (e.g. the held-out windows of
    one document) are correlated: the cluster-robust (sandwich) estimate
    ``sqrt(G / (G - 1) * sum_g (sum_{i in g} (x_i - mean))^2) / n`` over the G groups (nan when
    G < 2).  With one value per group it is the usual SE times sqrt(G / (G - 1) * (n-1) / n)."""
    x, groups = np.asarray(x, np.float64), np.asarray(groups)
    _, g = np.unique(groups, return_inverse=True)
    G = int(g.max()) + 1 if len(g) else 0
    if G < 2:
        return float("nan")
    s = np.bincount(g.reshape(-1), weights=x - x.mean(), minlength=G)
    return float(math.sqrt(G / (G - 1) * np.sum(s * s)) / len(x))


def document_sums(losses_N: np.ndarray, documents: np.ndarray) -> pd.DataFrame:
    """Per held-out document: ``document`` (its id), ``windows`` (sequences scored from it) and
    ``loss_sum_nats`` (the sum of their mean losses, float64). Two models scored on the same
    windows have a paired loss difference ``sum_g (S_a,g - S_b,g) / n`` whose document-clustered
    SE follows from these sums alone (``jscale.analysis.paired_differences``)."""
    ids, inv = np.unique(np.asarray(documents), return_inverse=True)
    inv = inv.reshape(-1)
    return pd.DataFrame(
        {
            "document": ids,
            "windows": np.bincount(inv, minlength=len(ids)),
            "loss_sum_nats": np.bincount(
                inv, weights=np.asarray(losses_N, np.float64), minlength=len(ids)
            ),
        }
    )


def bits_per_byte(
    losses_N: np.ndarray, tokens_per_window: int, bytes_N=None, documents=None
) -> dict:
    """Bits per byte of text from per-window mean losses ``[N]`` (nats/token) and the bytes of
    text each window predicts ``bytes_N`` ``[N]`` (``data.window_bytes``; None: one token is one
    byte): ``eval_bits_per_byte = sum of nats / ln 2 / sum of bytes``, the one axis on which
    models with different tokenizers compare.  ``eval_bits_per_byte_se`` is the standard error of
    that ratio over windows (delta method: the SE of the mean of ``T l_i - r b_i``, divided by
    the mean bytes); ``eval_text_bytes`` is the sum of bytes (absent without ``bytes_N`` or when
    it holds NaN: bytes unknown, and then bits per byte are NaN).  ``documents`` (each window's
    held-out document, ``data.eval_documents``): also ``eval_bits_per_byte_se_docs``, the same
    residuals' SE clustered by document (``clustered_se``)."""
    losses_N = np.asarray(losses_N, np.float64)
    if bytes_N is None:
        mean, se = mean_and_se(losses_N)
        return {"eval_bits_per_byte": mean / LN2, "eval_bits_per_byte_se": se / LN2}
    nats_N = losses_N * tokens_per_window
    b_N = np.asarray(bytes_N, np.float64)
    total = b_N.sum()
    if not total > 0:  # no text, or bytes unknown (NaN): no bits per byte to report
        nan = float("nan")
        out = {"eval_bits_per_byte": nan, "eval_bits_per_byte_se": nan}
        return out | ({"eval_text_bytes": 0} if total == 0 else {})
    r = nats_N.sum() / total
    z_N = nats_N - r * b_N  # the ratio's linearised residuals
    _, se = mean_and_se(z_N)
    out = {
        "eval_bits_per_byte": r / LN2,
        "eval_bits_per_byte_se": se / b_N.mean() / LN2,
        "eval_text_bytes": int(total),
    }
    if documents is not None:
        out["eval_bits_per_byte_se_docs"] = clustered_se(z_N, documents) / b_N.mean() / LN2
    return out


def evaluate(
    params,
    cfg: ModelConfig,
    batches_NxT1: np.ndarray,
    batch_size: int = 32,
    policy="fp32",
    mesh=None,
    bytes_N: np.ndarray | None = None,
) -> dict[str, float]:
    """Held-out loss on fixed sequences ``[N, T+1]`` in precision ``policy``.

    Returns ``eval_loss_nats`` (mean next-token loss, nats/token), ``eval_loss_se_nats``
    (standard error over the N per-sequence means), ``eval_tokens`` (predicted tokens) and
    ``bits_per_byte``'s columns (``bytes_N``: bytes of text each window predicts,
    ``data.window_bytes``; None: one token is one byte).  The mean is accumulated in float64 on
    the host.  ``mesh``: see ``sequence_losses``.
    """
    losses_N = sequence_losses(params, cfg, batches_NxT1, batch_size, policy, mesh)
    mean, se = mean_and_se(losses_N)
    return {
        "eval_loss_nats": mean,
        "eval_loss_se_nats": se,
        **bits_per_byte(losses_N, batches_NxT1.shape[1] - 1, bytes_N),
        "eval_tokens": int(batches_NxT1.shape[0] * (batches_NxT1.shape[1] - 1)),
    }


def compare_precisions(
    params,
    cfg: ModelConfig,
    eval_set_NxT1: np.ndarray,
    policies=("fp32", "bf16", "int8", "w8a8"),
    batch_size: int = 32,
    logit_sequences: int = 8,
    documents: np.ndarray | None = None,
    bytes_N: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per policy (names or ``Policy`` objects; the first row is fp32, the reference,
    always included), with the ``evaluate`` columns of ``jscale.schema`` (their units and
    meaning are there): ``inference_precision`` (a policy with non-default layers is labelled
    e.g. ``int8[down,embed,out,qkv,up]``), ``eval_tokens``, ``eval_loss_nats``,
    ``eval_loss_se_nats``, ``eval_bits_per_byte(_se)`` and ``eval_text_bytes`` (``bytes_N``:
    see ``bits_per_byte``), ``delta_loss_vs_fp32_nats`` with its
    paired ``_se_nats`` and ``_pct``, ``param_bytes``, ``param_bytes_vs_fp32`` and
    ``logit_rel_err_mean`` / ``_max`` over the positions of the first ``logit_sequences``
    held-out sequences.  ``eval_wall_s`` is not filled (the caller times the whole call).
    ``documents``: the held-out document of each sequence (``data.eval_documents``); then
    ``eval_loss_se_docs_nats`` and ``delta_loss_vs_fp32_se_docs_nats`` give the standard errors
    clustered by document (``clustered_se``), which the windows of one file share, and
    ``document_losses`` (not a record column) holds each precision's ``document_sums``: what a
    later comparison with another model scored on the same windows needs for a paired SE.
    """
    fp32 = precision.POLICIES["fp32"]
    policies = [fp32] + [p for p in map(precision.get_policy, policies) if p != fp32]
    tokens_NxT = eval_set_NxT1[:logit_sequences, :-1]
    n_predicted = int(eval_set_NxT1.shape[0] * (eval_set_NxT1.shape[1] - 1))
    rows, ref = [], None
    for policy in policies:
        converted = precision.convert_params(params, policy)
        losses_N = sequence_losses(converted, cfg, eval_set_NxT1, batch_size, policy=policy)
        logits = np.asarray(_logits(converted, cfg, tokens_NxT, policy), np.float64)
        nbytes = precision.param_bytes(converted)
        if ref is None:
            ref = {"losses_N": losses_N, "logits": logits, "bytes": nbytes}
        rel_err = np.linalg.norm(logits - ref["logits"], axis=-1) / np.linalg.norm(
            ref["logits"], axis=-1
        )
        loss, loss_se = mean_and_se(losses_N)
        delta, delta_se = mean_and_se(losses_N - ref["losses_N"])
        rows.append(
            {
                "inference_precision": policy.label,
                "eval_tokens": n_predicted,
                "eval_loss_nats": loss,
                "eval_loss_se_nats": loss_se,
                **bits_per_byte(losses_N, eval_set_NxT1.shape[1] - 1, bytes_N, documents),
                "delta_loss_vs_fp32_nats": delta,
                "delta_loss_vs_fp32_se_nats": delta_se,
                "delta_loss_vs_fp32_pct": 100 * delta / ref["losses_N"].mean(),
                "param_bytes": nbytes,
                "param_bytes_vs_fp32": nbytes / ref["bytes"],
                "weight_bits": policy.bits if policy.layers else 32,
                "logit_rel_err_mean": rel_err.mean(),
                "logit_rel_err_max": rel_err.max(),
            }
        )
        if documents is not None:
            rows[-1]["document_losses"] = document_sums(losses_N, documents)
            rows[-1]["eval_loss_se_docs_nats"] = clustered_se(losses_N, documents)
            rows[-1]["delta_loss_vs_fp32_se_docs_nats"] = clustered_se(
                losses_N - ref["losses_N"], documents
            )
    return pd.DataFrame(rows)
