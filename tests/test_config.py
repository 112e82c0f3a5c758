"""Config validation, from_dict, TrainConfig arithmetic and the size ladder."""

import dataclasses

import numpy as np
import pytest

from jscale import config
from jscale.config import ConfigError, ModelConfig, TrainConfig, count_params


def _non_embedding(cfg):
    # independent closed form (see test_model): blocks + final norm
    d, f = cfg.d_model, cfg.d_ff
    return cfg.n_layers * (4 * d * d + 2 * d * f + 2 * d) + d


# --------------------------------------------------------------------------- ModelConfig validation


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_d_model_not_divisible_by_n_heads():
    with pytest.raises(ConfigError, match="n_heads") as e:
        ModelConfig(d_model=30, n_heads=4)
    assert "30" in str(e.value) and "4" in str(e.value)


def test_odd_head_width_rejected():
    with pytest.raises(ConfigError, match="even"):
        ModelConfig(d_model=30, n_heads=2)  # head width 15
    ModelConfig(d_model=30, n_heads=3)  # head width 10 is fine


@pytest.mark.parametrize(
    "field", ["d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "max_seq_len"]
)
@pytest.mark.parametrize("bad", [0, -4])
def test_model_non_positive_fields(field, bad):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**{field: bad})


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"d_model": 64.0}, "d_model"),  # not an integer
        ({"n_layers": True}, "n_layers"),  # bool is not an integer here
        ({"vocab_size": 1}, "vocab_size"),
        ({"rope_base": 1.0}, "rope_base"),
        ({"tie_embeddings": 1}, "tie_embeddings"),
    ],
)
def test_model_other_bad_values(kw, name):
    with pytest.raises(ConfigError, match=name):
        ModelConfig(**kw)


def test_model_defaults_and_head_dim():
    c = ModelConfig(d_model=96, n_heads=3)
    assert c.d_ff == 384 and c.head_dim == 32
    assert ModelConfig(d_model=96, n_heads=3, d_ff=10).d_ff == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 128


# --------------------------------------------------------------------------- from_dict


def test_from_dict_builds_config():
    c = config.from_dict(ModelConfig, {"d_model": 64, "n_heads": 2, "tie_embeddings": False})
    assert c == ModelConfig(d_model=64, n_heads=2, tie_embeddings=False)


def test_from_dict_unknown_key_names_it_and_lists_valid_fields():
    with pytest.raises(ConfigError) as e:
        config.from_dict(ModelConfig, {"d_model": 64, "n_head": 2, "dropout": 0.1}, where="[model]")
    msg = str(e.value)
    assert "n_head" in msg and "dropout" in msg and "[model]" in msg
    for f in dataclasses.fields(ModelConfig):
        assert f.name in msg


def test_from_dict_validates_values():
    with pytest.raises(ConfigError, match="n_heads"):
        config.from_dict(ModelConfig, {"d_model": 64, "n_heads": 3})
    with pytest.raises(ConfigError, match="lr"):
        config.from_dict(TrainConfig, {"steps": 10, "lr": -1.0})


# --------------------------------------------------------------------------- TrainConfig


def test_train_steps_and_tokens_exactly_one():
    with pytest.raises(ConfigError, match="exactly one"):
        TrainConfig(steps=10, tokens=1000)
    with pytest.raises(ConfigError, match="exactly one"):
        TrainConfig()


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"seq_len": -1}, "seq_len"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"warmup_frac": 1.0}, "warmup_frac"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"b2": 1.0}, "b2"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"seed": -1}, "seed"),
    ],
)
def test_train_bad_values(kw, name):
    kw = {"steps": 10, **kw}
    with pytest.raises(ConfigError, match=name):
        TrainConfig(**kw)


def test_total_steps_from_token_budget_rounds_up():
    assert TrainConfig(tokens=1000, batch_size=2, seq_len=64).total_steps == 8  # 1000 / 128 = 7.8
    assert TrainConfig(tokens=1024, batch_size=2, seq_len=64).total_steps == 8  # exact
    assert TrainConfig(tokens=1025, batch_size=2, seq_len=64).total_steps == 9
    assert TrainConfig(tokens=1, batch_size=2, seq_len=64).total_steps == 1
    assert TrainConfig(steps=37).total_steps == 37
    assert TrainConfig(steps=1, batch_size=3, seq_len=5).tokens_per_step == 15


def test_warmup_step_arithmetic():
    assert TrainConfig(steps=100, warmup_frac=0.1).total_warmup_steps == 10
    assert TrainConfig(steps=100, warmup_frac=0.0).total_warmup_steps == 0
    assert TrainConfig(steps=100, warmup_steps=7).total_warmup_steps == 7
    assert (
        TrainConfig(steps=100, warmup_frac=0.29).total_warmup_steps == 29
    )  # 0.29 * 100 = 28.999...
    assert TrainConfig(steps=5, warmup_steps=50).total_warmup_steps == 5  # capped at the run length
    # token budget: 1000 tokens / 128 per step -> 8 steps; 25 % of 8 = 2
    assert (
        TrainConfig(tokens=1000, batch_size=2, seq_len=64, warmup_frac=0.25).total_warmup_steps == 2
    )


# --------------------------------------------------------------------------- ladder

LADDER_TARGETS = np.logspace(4, 9, 11)


@pytest.mark.parametrize("target", LADDER_TARGETS, ids=lambda t: f"{t:.2g}")
def test_config_for_params_hits_target(target):
    cfg = config.config_for_params(float(target))
    n = _non_embedding(cfg)
    assert n == count_params(cfg)["non_embedding"]
    # measured: the worst ratio over these 11 targets is ~1.245 (small models, where the
    # (d_model, n_layers) grid is coarse and the aspect-ratio penalty pulls the choice);
    # from 1e8 up the grid is fine enough for 5 % (dense sweep: 0.97 .. 1.04)
    assert 0.8 <= n / target <= 1.25, (cfg, n / target)
    if target >= 1e8:
        assert abs(n / target - 1) < 0.05, (cfg, n / target)
    assert cfg.d_model % cfg.n_heads == 0
    assert cfg.d_ff == 4 * cfg.d_model
    if cfg.d_model >= 64:
        assert cfg.head_dim == 64
    else:
        assert cfg.n_heads == 1 and cfg.d_model % 8 == 0


def test_config_for_params_passes_options_through():
    cfg = config.config_for_params(
        1e6, vocab_size=300, max_seq_len=77, tie_embeddings=False, head_dim=32
    )
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.tie_embeddings, cfg.head_dim) == (
        300,
        77,
        False,
        32,
    )


def test_config_for_params_with_a_fixed_head_count():
    """n_heads fixes the head count: the heads widen with d_model (a multiple of 8 and of
    2 n_heads), and the count nearest the target is found as with head_dim (N = L (12 d^2 +
    2 d) + d)."""
    for target, d in ((6e3, 16), (1.4e4, 24), (2.5e4, 32), (5.5e4, 48), (2.2e5, 96)):
        cfg = config.config_for_params(target, n_layers=2, n_heads=2, head_dim=8)
        assert (cfg.d_model, cfg.n_heads, cfg.head_dim) == (d, 2, d // 2)
        assert _non_embedding(cfg) == 2 * (12 * d * d + 2 * d) + d
    cfg = config.config_for_params(1e5, n_layers=2, n_heads=3)
    assert cfg.d_model % 24 == 0 and cfg.n_heads == 3  # lcm(8, 2 x 3)
    with pytest.raises(ConfigError, match="n_heads"):
        config.config_for_params(1e5, n_heads=0)


def test_config_for_params_aspect_ratio_shapes_the_model():
    # deeper-and-narrower vs shallower-and-wider at the same target
    deep = config.config_for_params(1e8, aspect_ratio=16)
    wide = config.config_for_params(1e8, aspect_ratio=256)
    assert deep.n_layers > wide.n_layers and deep.d_model < wide.d_model
    for c in (deep, wide):
        assert abs(_non_embedding(c) / 1e8 - 1) < 0.1


def test_default_ladder_spans_range_and_increases():
    ladder = config.default_ladder()
    ns = [_non_embedding(c) for c in ladder]
    assert len(ladder) >= 8
    assert all(b > a for a, b in zip(ns, ns[1:])), ns
    assert 0.8e4 <= ns[0] <= 1.25e4
    assert 0.97e9 <= ns[-1] <= 1.03e9
    # two sizes per decade by default: consecutive sizes roughly sqrt(10) apart
    ratios = np.array(ns[1:]) / np.array(ns[:-1])
    assert np.all(ratios > 1.5) and np.all(ratios < 6)


def test_default_ladder_per_decade():
    ladder = config.default_ladder(1e5, 1e7, per_decade=4)
    ns = [_non_embedding(c) for c in ladder]
    assert all(b > a for a, b in zip(ns, ns[1:]))
    assert len(ladder) >= 7  # up to 9 targets, duplicates dropped


@pytest.mark.parametrize("target", [999, 0, -5, float("nan"), float("inf")])
def test_config_for_params_rejects_bad_target(target):
    with pytest.raises(ConfigError):
        config.config_for_params(target)


def test_default_ladder_rejects_bad_range():
    with pytest.raises(ConfigError):
        config.default_ladder(1e6, 1e5)
    with pytest.raises(ConfigError):
        config.default_ladder(100, 1e5)
    with pytest.raises(ConfigError):
        config.default_ladder(per_decade=0)


def test_train_config_rejects_non_numbers_and_short_eval():
    with pytest.raises(ConfigError, match="TrainConfig.lr must be a finite number"):
        TrainConfig(steps=10, lr="0.1")
    with pytest.raises(ConfigError, match="eval_tokens"):
        TrainConfig(steps=10, seq_len=256, eval_tokens=100)
    with pytest.raises(ConfigError, match="compute"):
        TrainConfig(steps=10, compute="fp16")
    with pytest.raises(ConfigError, match="rope_base"):
        ModelConfig(rope_base=float("inf"))


def test_ladder_targets_are_log_spaced_and_validated():
    t = config.ladder_targets(1e4, 1e6, 2)
    np.testing.assert_allclose(t, [1e4, 10**4.5, 1e5, 10**5.5, 1e6])
    for bad in [dict(lo=0), dict(lo=1e9, hi=1e4), dict(per_decade=0), dict(hi=float("inf"))]:
        with pytest.raises(ConfigError):
            config.ladder_targets(**{**dict(lo=1e4, hi=1e9, per_decade=2), **bad})
