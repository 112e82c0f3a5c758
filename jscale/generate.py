"""The inference programs: prefill a prompt into a KV cache, decode greedily, or both.

* ``prefill``: the prompt ``[B, P]`` through the model into an empty KV cache of
  ``P + G`` positions; returns the greedy next token and the cache.
* ``decode``: G greedy decode steps in one ``lax.scan`` inside one jit (no host round-trip
  per token), the cache donated so it is updated in place.
* ``generate``: both, in one jit.

``jscale.latency`` times them; ``jscale.autotune`` times ``decode`` under each candidate
formulation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jscale import formulation, model, sharding
from jscale.config import ModelConfig


def _constrain_cache(cache, mesh):
    """With a mesh: the KV cache split by batch over "data" and heads over "fsdp"."""
    if mesh is None:
        return cache
    return jax.lax.with_sharding_constraint(cache, sharding.cache_shardings(cache, mesh))


@functools.partial(jax.jit, static_argnames=("cfg", "gen_tokens", "policy", "form", "mesh"))
def prefill(
    params,
    cfg: ModelConfig,
    prompt_BxP,
    gen_tokens: int,
    policy,
    *,
    form=formulation.TRAINED,
    mesh=None,
):
    """Prompt into a fresh cache of ``P + gen_tokens`` positions: (next token [B], cache).
    ``mesh`` (``jscale.sharding``): the cache is constrained to its sharding (batch over
    "data", heads over "fsdp"); the params keep the placement they come with."""
    cache = _constrain_cache(
        model.init_cache(cfg, prompt_BxP.shape[0], prompt_BxP.shape[1] + gen_tokens, policy), mesh
    )
    logits_BxPxV, cache = model.apply_cached(params, cfg, prompt_BxP, cache, policy, form)
    return jnp.argmax(logits_BxPxV[:, -1], axis=-1).astype(jnp.int32), _constrain_cache(cache, mesh)


def _decode(
    params, cache, token_B, *, cfg, gen_tokens, policy, form=formulation.TRAINED, mesh=None
):
    def step(carry, _):
        tok, c = carry
        logits_Bx1xV, c = model.apply_cached(params, cfg, tok[:, None], c, policy, form)
        nxt = jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
        return (nxt, _constrain_cache(c, mesh)), tok

    (_, cache), toks_GxB = jax.lax.scan(step, (token_B, cache), None, length=gen_tokens)
    return toks_GxB.T, cache


decode = jax.jit(
    _decode, static_argnames=("cfg", "gen_tokens", "policy", "form", "mesh"), donate_argnums=(1,)
)
decode.__doc__ = """``gen_tokens`` greedy steps from ``token_B`` (the prefill's output): tokens
``[B, gen_tokens]`` (the first is ``token_B``) and the cache; the cache argument is donated.
``form``: how the params are laid out and run (``jscale.formulation``).
The cache must have room for ``gen_tokens`` more positions: inside jit a write past the
buffer is clamped, not caught (``prefill`` sizes it exactly).  ``mesh``: as in ``prefill``."""


@functools.partial(jax.jit, static_argnames=("cfg", "gen_tokens", "policy", "form", "mesh"))
def generate(
    params,
    cfg: ModelConfig,
    prompt_BxP,
    gen_tokens: int,
    policy="fp32",
    *,
    form=formulation.TRAINED,
    mesh=None,
):
    """Greedy generation of ``gen_tokens`` tokens after the prompt, in one jit: ``[B, G]``."""
    token_B, cache = prefill(params, cfg, prompt_BxP, gen_tokens, policy, form=form, mesh=mesh)
    return _decode(
        params, cache, token_B, cfg=cfg, gen_tokens=gen_tokens, policy=policy, form=form, mesh=mesh
    )[0]
