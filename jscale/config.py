"""Configs (frozen dataclasses), their validation, and the model-size ladder.

Every config is a frozen dataclass with short fields and is checked in
``__post_init__``, so an invalid value fails when the config is built, before any
compute.  ``from_dict`` builds a config from a plain mapping (a TOML table, CLI
flags) and rejects unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, TypeVar

C = TypeVar("C")

LATENCY_REPEATS = 5  # timed runs behind every latency number, by default (sweeps, `jscale bench`)
LATENCY_WARMUP = 2  # untimed runs before them
SCHEDULES = ("cosine", "wsd")
COOLDOWN_SHAPES = ("1-sqrt", "linear")


class ConfigError(ValueError):
    """An invalid config value or key; the message names the field and what is allowed."""


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_positive_int(v: Any) -> bool:
    """An integer (Python or numpy, not bool) >= 1: the one test of "positive integer" in jscale."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def check_positive_int(v: Any, name: str) -> int:
    """``v`` as an int, or a ``ConfigError`` saying ``name`` must be a positive integer."""
    _require(is_positive_int(v), f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _positive_int(cfg: Any, *names: str) -> None:
    for n in names:
        check_positive_int(getattr(cfg, n), f"{type(cfg).__name__}.{n}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer (see ``jscale.model`` for the architecture).

    d_model: residual width.  n_layers: number of blocks.  n_heads: attention heads
    (d_model must be divisible by n_heads; head width = d_model // n_heads).
    d_ff: hidden width of the MLP (default 4 * d_model).  vocab_size: tokens (256 =
    bytes).  max_seq_len: longest sequence the model accepts, in tokens.
    tie_embeddings: the output head reuses the input embedding matrix.
    rope_base: base of the rotary position encoding.
    """

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int | None = None
    vocab_size: int = 256
    max_seq_len: int = 1024
    tie_embeddings: bool = True
    rope_base: float = 10_000.0

    def __post_init__(self):
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        _positive_int(self, "d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "max_seq_len")
        _require(
            self.vocab_size >= 2, f"ModelConfig.vocab_size must be >= 2, got {self.vocab_size}"
        )
        _require(
            self.d_model % self.n_heads == 0,
            f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})",
        )
        _require(
            (self.d_model // self.n_heads) % 2 == 0,
            f"ModelConfig head width d_model/n_heads = {self.d_model // self.n_heads} must be even "
            "(rotary position encoding rotates pairs of channels)",
        )
        _require(
            isinstance(self.tie_embeddings, bool),
            f"ModelConfig.tie_embeddings must be true or false, got {self.tie_embeddings!r}",
        )
        _require(
            _is_number(self.rope_base) and math.isfinite(self.rope_base) and self.rope_base > 1,
            f"ModelConfig.rope_base must be a number > 1, got {self.rope_base!r}",
        )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one model is trained.

    Length: ``steps`` optimizer steps, or ``tokens`` (a token budget, rounded up to whole
    steps of batch_size * seq_len tokens); give exactly one.  lr: peak AdamW learning rate,
    reached after ``warmup_steps`` (or ``warmup_frac`` of the run when warmup_steps is None)
    of linear warm-up, then cosine decay to ``lr * min_lr_ratio``.  weight_decay: decoupled
    AdamW decay, applied to matrices only (not norms).  grad_clip: max global L2 norm of the
    gradient.  seed: the one integer all randomness (init, batches) derives from.
    eval_tokens: size of the fixed held-out set, in tokens.  steps_per_call: optimizer
    steps run inside one jitted call (lax.scan), which amortises dispatch for small models.
    compute: "fp32", or "bf16" for mixed precision (fp32 master weights and optimizer state,
    bf16 matmuls; norms, softmax and loss in fp32).
    schedule: "cosine" (warm-up, then cosine decay over the run) or "wsd" (warmup-stable-decay:
    warm-up, constant lr, then a cooldown over the last ``cooldown_frac`` of the steps, rounded
    to whole calls of ``steps_per_call``, at least one; ``cooldown_shape`` "1-sqrt" or
    "linear").  A "wsd" run given in tokens has its steps rounded up to whole calls, so every
    call of a trunk and its branches has one compiled length.
    """

    batch_size: int = 16
    seq_len: int = 256
    steps: int | None = None
    tokens: int | None = None
    lr: float = 3e-3
    warmup_steps: int | None = None
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    eval_tokens: int = 262_144
    eval_batch_size: int = 32
    steps_per_call: int = 10
    compute: str = "fp32"
    schedule: str = "cosine"
    cooldown_frac: float = 0.2
    cooldown_shape: str = "1-sqrt"

    def __post_init__(self):
        _positive_int(
            self, "batch_size", "seq_len", "eval_tokens", "eval_batch_size", "steps_per_call"
        )
        for name in ("lr", "warmup_frac", "min_lr_ratio", "weight_decay", "b1", "b2", "grad_clip"):
            _require(
                _is_number(getattr(self, name)) and math.isfinite(getattr(self, name)),
                f"TrainConfig.{name} must be a finite number, got {getattr(self, name)!r}",
            )
        _require(
            self.eval_tokens >= self.seq_len,
            f"TrainConfig.eval_tokens ({self.eval_tokens}) must be at least "
            f"seq_len ({self.seq_len}): "
            "the held-out set is made of whole sequences",
        )
        _require(
            (self.steps is None) != (self.tokens is None),
            "TrainConfig: give exactly one of `steps` or `tokens` (a token budget); "
            f"got steps={self.steps!r}, tokens={self.tokens!r}",
        )
        if self.steps is not None:
            _positive_int(self, "steps")
        if self.tokens is not None:
            _positive_int(self, "tokens")
        if self.warmup_steps is not None:
            _require(
                isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
                f"TrainConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}",
            )
        _require(
            0 <= self.warmup_frac < 1,
            f"TrainConfig.warmup_frac must be in [0, 1), got {self.warmup_frac!r}",
        )
        _require(self.lr > 0, f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        _require(
            0 <= self.min_lr_ratio <= 1,
            f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}",
        )
        _require(
            self.weight_decay >= 0,
            f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}",
        )
        _require(
            0 <= self.b1 < 1 and 0 <= self.b2 < 1,
            f"TrainConfig.b1 and b2 must be in [0, 1), got {self.b1!r}, {self.b2!r}",
        )
        _require(self.grad_clip > 0, f"TrainConfig.grad_clip must be > 0, got {self.grad_clip!r}")
        _require(
            self.compute in ("fp32", "bf16"),
            f"TrainConfig.compute must be 'fp32' or 'bf16', got {self.compute!r}",
        )
        _require(
            self.schedule in SCHEDULES,
            f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        _require(
            _is_number(self.cooldown_frac) and 0 < self.cooldown_frac <= 1,
            f"TrainConfig.cooldown_frac must be in (0, 1], got {self.cooldown_frac!r}",
        )
        _require(
            self.cooldown_shape in COOLDOWN_SHAPES,
            f"TrainConfig.cooldown_shape must be one of {', '.join(COOLDOWN_SHAPES)}, "
            f"got {self.cooldown_shape!r}",
        )
        _require(
            isinstance(self.seed, int) and 0 <= self.seed < 2**31,
            f"TrainConfig.seed must be an integer in [0, 2^31 - 1], got {self.seed!r}",
        )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        steps = -(-self.tokens // self.tokens_per_step)
        if self.schedule == "wsd":
            steps = -(-steps // self.steps_per_call) * self.steps_per_call
        return steps

    @property
    def cooldown_steps(self) -> int:
        """Updates in the WSD cooldown (0 for cosine): whole calls, at least one, at most the
        run."""
        if self.schedule != "wsd":
            return 0
        per = self.steps_per_call
        return min(
            self.total_steps, per * max(1, round(self.cooldown_frac * self.total_steps / per))
        )

    @property
    def cooldown_start(self) -> int:
        """The first update of the WSD cooldown (``total_steps`` for cosine)."""
        return self.total_steps - self.cooldown_steps

    @property
    def total_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, self.total_steps)
        return round(self.warmup_frac * self.total_steps)


def from_dict(cls: type[C], d: Mapping[str, Any], where: str = "") -> C:
    """Build config ``cls`` from a mapping; unknown keys are a ConfigError naming them."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    loc = f" in {where}" if where else ""
    _require(
        not unknown,
        f"unknown {cls.__name__} field(s){loc}: {', '.join(unknown)}; "
        f"valid fields are: {', '.join(sorted(fields))}",
    )
    return cls(**d)


# --------------------------------------------------------------------------- size ladder


def config_for_params(
    target: float,
    *,
    aspect_ratio: float = 64.0,
    head_dim: int = 64,
    vocab_size: int = 256,
    max_seq_len: int = 1024,
    tie_embeddings: bool = True,
    n_layers: int | None = None,
    n_heads: int | None = None,
) -> ModelConfig:
    """The ladder config whose non-embedding parameter count is closest to ``target``.
    ``n_layers``: fix the depth (the ladder then varies the width only, and ``aspect_ratio``
    is ignored).  ``n_heads``: fix the number of heads instead of their width (``head_dim`` is
    then ignored): d_model is a multiple of 8 and of ``2 n_heads``, and the heads are
    ``d_model / n_heads`` wide, so they widen with the model.

    Non-embedding parameters of this architecture are ``n_layers * (12 d^2 + 2 d) + d``
    (``count_params``).  We search n_layers and d_model (a multiple of
    ``head_dim``; below ``head_dim`` a single head whose width is a multiple of 8) for the
    count closest to ``target`` in log space, with a small penalty for straying from
    ``d_model / n_layers = aspect_ratio``.  Heads are ``head_dim`` wide; d_ff = 4 d_model.
    How far the achieved count lands from the target is tabulated by ``jscale ladder``.
    """
    _require(
        isinstance(target, (int, float)) and math.isfinite(target) and 1_000 <= target <= 1e13,
        f"target non-embedding parameter count must be a number in [1e3, 1e13], got {target!r}",
    )
    _require(aspect_ratio > 0, f"aspect_ratio must be > 0, got {aspect_ratio!r}")
    l_ideal = (target / (12 * aspect_ratio**2)) ** (1 / 3)
    best = None
    if n_layers is not None:
        check_positive_int(n_layers, "n_layers")
    if n_heads is not None:
        check_positive_int(n_heads, "n_heads")
    depths = [n_layers] if n_layers else range(1, max(2, math.ceil(3 * l_ideal)) + 1)
    for n_layers in depths:  # noqa: B020 - the loop variable replaces the fixed depth
        d_ideal = math.sqrt(target / (12 * n_layers))
        if n_heads is None:
            quantum = head_dim if d_ideal >= head_dim else 8
        else:
            quantum = math.lcm(8, 2 * n_heads)
        for d in {
            max(quantum if n_heads else 8, quantum * math.floor(d_ideal / quantum)),
            quantum * math.ceil(d_ideal / quantum),
        }:
            if n_heads is None and d >= head_dim and d % head_dim:
                continue
            cfg = ModelConfig(
                d_model=d,
                n_layers=n_layers,
                n_heads=n_heads or max(1, d // head_dim),
                vocab_size=vocab_size,
                max_seq_len=max_seq_len,
                tie_embeddings=tie_embeddings,
            )
            n = count_params(cfg)["non_embedding"]
            score = abs(math.log(n / target))
            if len(depths) > 1:
                score += 0.1 * abs(math.log(d / n_layers / aspect_ratio))
            if best is None or score < best[0]:
                best = (score, cfg)
    return best[1]


def ladder_targets(lo: float = 1e4, hi: float = 1e9, per_decade: int = 2) -> list[float]:
    """Targets ``lo * 10^(i / per_decade)`` non-embedding parameters for i = 0 .. n, with n the
    step count nearest to reaching ``hi`` (so the last target is within half a step of hi)."""
    _require(
        _is_number(lo)
        and _is_number(hi)
        and math.isfinite(lo)
        and math.isfinite(hi)
        and 1_000 <= lo <= hi,
        f"ladder range must satisfy 1e3 <= lo <= hi (finite), got lo={lo!r}, hi={hi!r}",
    )
    _require(
        isinstance(per_decade, int) and per_decade >= 1,
        f"per_decade must be a positive integer, got {per_decade!r}",
    )
    n = round(math.log10(hi / lo) * per_decade)
    return [lo * 10 ** (i / per_decade) for i in range(n + 1)]


def default_ladder(
    lo: float = 1e4, hi: float = 1e9, per_decade: int = 2, **kw
) -> list[ModelConfig]:
    """Configs for ``ladder_targets(lo, hi, per_decade)``; duplicates are dropped."""
    out: list[ModelConfig] = []
    for t in ladder_targets(lo, hi, per_decade):
        cfg = config_for_params(t, **kw)
        if cfg not in out:
            out.append(cfg)
    return out


# --------------------------------------------------------------------------- analytic counts


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts of ``jscale.model.Transformer(cfg)``: ``total``, ``embedding``
    (token embedding, plus the output head when untied) and ``non_embedding`` (everything
    else: blocks and final norm, ``n_layers * (12 d^2 + 2 d) + d`` with d_ff = 4 d)."""
    d, f = cfg.d_model, cfg.d_ff
    per_layer = 3 * d * d + d * d + 2 * d * f + 2 * d  # qkv, out, up+down, two norm scales
    non_embedding = cfg.n_layers * per_layer + d
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return {
        "total": non_embedding + embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
    }


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Matmul FLOPs per token for a sequence of ``seq_len`` tokens.

    ``forward = 2 * (matmul weights) + 2 * d_model * vocab + 4 * n_layers * seq_len * d_model``:
    a multiply-add is 2 FLOPs; the head is counted (tied or not); the attention term counts
    ``q k^T`` and ``att v`` over the full T x T score matrix, as XLA computes it (the causal
    mask zeroes half of it; the FLOPs are spent anyway).  Norms, softmax, GELU and RoPE are
    elementwise and not counted (a few % of the total at d_model >= 128).
    ``train = 3 * forward`` (backward = 2 x forward).
    """
    d, f, n_l = cfg.d_model, cfg.d_ff, cfg.n_layers
    matmul_weights = n_l * (4 * d * d + 2 * d * f)
    forward = 2 * matmul_weights + 2 * d * cfg.vocab_size + 4 * n_l * seq_len * d
    return {"forward": float(forward), "train": float(3 * forward)}


def kv_cache_bytes(cfg: ModelConfig, batch: int, max_len: int, itemsize: int = 4) -> int:
    """Bytes of the K and V buffers of a KV cache of ``max_len`` positions."""
    return 2 * cfg.n_layers * batch * max_len * cfg.d_model * itemsize
