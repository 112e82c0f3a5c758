"""The laws jscale fits, and the solver that fits them.

Forms (``FORMS``; ``N`` = model size ``x``, ``D`` = tokens ``d``, all positive):

- ``"saturating"``   ``L = E + A * N**-alpha``                   params ``E, A, alpha``
- ``"power"``        ``y = k * N**b``                            params ``k, b``
- ``"offset_power"`` ``y = c + k * N**b``                        params ``c, k, b``
- ``"affine"``       ``t = c + k * N``                            params ``c, k``
- ``"chinchilla"``   ``L = E + A / N**alpha + B / D**beta``     params ``E, A, alpha, B, beta``
- ``"chinchilla_no_floor"`` ``L = A / N**alpha + B / D**beta``  params ``A, alpha, B, beta``
- any ``Form(name, fn, param_names, init_grid=...)`` with ``fn(params: dict, x, d) -> y`` in JAX.

Built-in forms are fitted in internal coordinates: log coefficients at the reference size (the
data's geometric mean of N and D), exponents in bounded coordinates (``DECAY_MAX``,
``SLOPE_MAX``).

The solver minimises ``sum_i w_i rho(log y_i - log yhat_i) / norm`` (``rho`` the Huber loss
with kink ``delta``; least squares when ``delta`` is beyond any residual) in float64 by
L-BFGS: optax's L-BFGS preconditioner for the direction and a backtracking line search that
tries 3 step lengths at once (``_STEPS``, Armijo test); after a failed step the curvature memory
is reset and the steps shrink 0.03x, after a success they grow 100x (up to 1), and
``_MAX_FAILS`` failures in a row end the run. Every run is a lane of a jitted, vmapped
``lax.while_loop`` (``_LANES`` lanes per call) that stops per lane when ``|grad| <= gtol`` and
``|f_prev - f| <= ftol * max(1, |f|)``, or at ``max_iter``; a run also counts as converged when
it stalls within ``_XTOL`` of its Newton step. Coordinates with ``mask`` 0 stay fixed (a
profile). Also the input checks every fit shares.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd


class AnalysisError(ValueError):
    """Bad input to a fit: NaN, non-positive values, too few rows, unknown form or column."""


# --------------------------------------------------------------------------- forms


# The built-in forms' exponents live in bounded internal coordinates, so a fit cannot wander to
# unphysical values: a decay exponent (alpha, beta) is DECAY_MAX * sigmoid(z), in (0, DECAY_MAX);
# offset_power's b is SLOPE_MAX * tanh(z), in (-SLOPE_MAX, SLOPE_MAX). A fit at an end of its
# range says so (``Fit.warnings``). The power form's b is unbounded: a line in log-log space is
# always identified.
DECAY_MAX = 4.0
SLOPE_MAX = 3.0


def _exp(t):
    """exp without a warning where an open interval's end is +-inf (exp(inf) = inf, as meant)."""
    with np.errstate(over="ignore"):
        return np.exp(t)


# kinds of internal coordinate -> (to value, from value), in numpy
_KINDS = {
    "coef": (_exp, lambda v: np.log(v)),
    "decay": (lambda t: DECAY_MAX / (1 + _exp(-t)), lambda v: np.log(v / (DECAY_MAX - v))),
    "slope": (lambda t: SLOPE_MAX * np.tanh(t), lambda v: np.arctanh(v / SLOPE_MAX)),
    "free": (lambda t: t, lambda v: v),
}


def _decay(z):
    return DECAY_MAX * jax.nn.sigmoid(z)


def _slope(z):
    return SLOPE_MAX * jnp.tanh(z)


@dataclasses.dataclass(frozen=True, eq=False)
class Form:
    """A fitted law. ``fn(params: dict[str, scalar], x, d) -> y`` (JAX, caller's units; ``d`` is
    ones for one-input forms). ``init_grid``: starts, either an array ``[G, P]`` or a dict
    ``name -> values`` (Cartesian product); default 64 log-normal jitters around ones.

    Built-in forms carry private versions used for fitting: ``log_pred`` in internal coordinates
    (one per parameter, of the ``kinds`` above) with ``u = ln(x / x_ref)``, ``v = ln(d / d_ref)``
    (the reference size is the data's geometric mean), and ``anchor``, which moves the
    coefficients from the reference to ``x = d = 1`` (the caller's units)."""

    name: str
    fn: Callable
    param_names: tuple
    init_grid: Any = None
    needs_d: bool = False
    log_pred: Callable | None = None  # (theta[P], u[n], v[n]) -> log yhat[n], internal coords
    kinds: tuple = ()  # per param: "coef", "decay", "slope" or "free"
    anchor: Callable | None = None  # (theta[..., P], lx, ld) -> theta re-anchored at x = d = 1
    grid: Callable | None = None  # (s = mean log y) -> starts in values [G, P]

    def __post_init__(self):
        object.__setattr__(self, "param_names", tuple(self.param_names))

    def _prep(self, x, d, lx0, ld0):
        """Inputs as the fitting code sees them: log(x / x0), log(d / d0) for built-in forms."""
        if self.log_pred is None:
            return x, d
        return np.log(x) - lx0, np.log(d) - ld0

    def _log_pred(self, theta, u, v):
        if self.log_pred is not None:
            return self.log_pred(theta, u, v)
        p = {k: theta[i] for i, k in enumerate(self.param_names)}
        return jnp.log(self.fn(p, u, v))

    def _values(self, theta) -> np.ndarray:
        """Internal coordinates ``[..., P]`` -> parameter values, same anchor."""
        theta = np.asarray(theta, float)
        if self.log_pred is None:
            return theta
        with np.errstate(over="ignore"):  # an open interval's end: exp(inf) = inf
            return np.stack([_KINDS[k][0](theta[..., i]) for i, k in enumerate(self.kinds)], -1)

    def _internal(self, values) -> np.ndarray:
        values = np.asarray(values, float)
        if self.log_pred is None:
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([_KINDS[k][1](values[..., i]) for i, k in enumerate(self.kinds)], -1)

    def _anchored(self, theta, lx0, ld0) -> np.ndarray:
        """Internal coordinates anchored at the reference -> anchored at x = d = 1."""
        theta = np.array(theta, float)
        return self.anchor(theta, lx0, ld0) if self.anchor is not None else theta

    def _to_user(self, theta, lx0, ld0):
        return self._values(self._anchored(theta, lx0, ld0))

    def _starts(self, s):
        if self.grid is not None and self.init_grid is None:
            return self._internal(self.grid(s))
        g = self.init_grid
        if g is None:
            P = len(self.param_names)
            jit_ = np.exp(np.random.default_rng(0).normal(0, 1, (63, P)))
            return np.vstack([np.ones((1, P)), jit_])
        if isinstance(g, dict):
            return np.array(
                list(itertools.product(*[np.atleast_1d(g[k]) for k in self.param_names])), float
            )
        g = np.atleast_2d(np.asarray(g, float))
        if g.shape[1] != len(self.param_names):
            raise AnalysisError(
                f"init_grid of form {self.name!r} has {g.shape[1]} columns, "
                f"expected {len(self.param_names)} ({', '.join(self.param_names)})"
            )
        return g


def _lse(a, b, c):
    m = jnp.maximum(jnp.maximum(a, b), c)
    m = jax.lax.stop_gradient(m)
    return m + jnp.log(jnp.exp(a - m) + jnp.exp(b - m) + jnp.exp(c - m))


def _grid(*axes):
    return np.array(list(itertools.product(*axes)), float)


def _shift(t, i, by):
    """``t`` with column ``i`` shifted by ``by`` (a re-anchored log-coefficient)."""
    t[..., i] = t[..., i] + by
    return t


_FR = [0.01, 0.1, 0.5]
_dec, _slo = _KINDS["decay"][0], _KINDS["slope"][0]
FORMS: dict[str, Form] = {
    "saturating": Form(
        "saturating",
        lambda p, x, d: p["E"] + p["A"] * x ** -p["alpha"],
        ("E", "A", "alpha"),
        log_pred=lambda t, u, v: jnp.logaddexp(t[0], t[1] - _decay(t[2]) * u),
        kinds=("coef", "coef", "decay"),
        anchor=lambda t, lx, ld: _shift(t, 1, _dec(t[..., 2]) * lx),
        grid=lambda s: _grid(
            np.exp(s) * np.array([0.05, 0.3, 0.6, 0.9]),
            np.exp(s) * np.array([0.01, 0.1, 0.5, 1.0]),
            [0.05, 0.15, 0.3, 0.6, 1.0, 2.0],
        ),
    ),
    "power": Form(
        "power",
        lambda p, x, d: p["k"] * x ** p["b"],
        ("k", "b"),
        log_pred=lambda t, u, v: t[0] + t[1] * u,
        kinds=("coef", "free"),
        anchor=lambda t, lx, ld: _shift(t, 0, -t[..., 1] * lx),
        grid=lambda s: _grid(np.exp(s + np.array([-1.0, 0.0, 1.0])), [-2, -1, -0.3, 0, 0.3, 1, 2]),
    ),
    "offset_power": Form(
        "offset_power",
        lambda p, x, d: p["c"] + p["k"] * x ** p["b"],
        ("c", "k", "b"),
        log_pred=lambda t, u, v: jnp.logaddexp(t[0], t[1] + _slope(t[2]) * u),
        kinds=("coef", "coef", "slope"),
        anchor=lambda t, lx, ld: _shift(t, 1, -_slo(t[..., 2]) * lx),
        grid=lambda s: _grid(
            np.exp(s) * np.array([0.01, 0.3, 0.9]),
            np.exp(s) * np.array([0.01, 0.1, 0.5, 1.0]),
            [-2, -1, -0.5, -0.2, 0.2, 0.5, 1, 2],
        ),
    ),
    "affine": Form(
        "affine",
        lambda p, x, d: p["c"] + p["k"] * x,
        ("c", "k"),
        log_pred=lambda t, u, v: jnp.logaddexp(t[0], t[1] + u),
        kinds=("coef", "coef"),
        anchor=lambda t, lx, ld: _shift(t, 1, -lx),
        grid=lambda s: _grid(
            np.exp(s) * np.array([0.01, 0.1, 0.3, 0.6, 0.9]),
            np.exp(s) * np.array([0.01, 0.1, 0.3, 0.6, 1.0]),
        ),
    ),
    "chinchilla": Form(
        "chinchilla",
        lambda p, x, d: p["E"] + p["A"] * x ** -p["alpha"] + p["B"] * d ** -p["beta"],
        ("E", "A", "alpha", "B", "beta"),
        needs_d=True,
        log_pred=lambda t, u, v: _lse(t[0], t[1] - _decay(t[2]) * u, t[3] - _decay(t[4]) * v),
        kinds=("coef", "coef", "decay", "coef", "decay"),
        anchor=lambda t, lx, ld: _shift(
            _shift(t, 1, _dec(t[..., 2]) * lx), 3, _dec(t[..., 4]) * ld
        ),
        grid=lambda s: _grid(
            np.exp(s) * np.array([0.2, 0.5, 0.8, 0.95]),
            np.exp(s) * np.array(_FR),
            [0.1, 0.3, 0.6, 1.2],
            np.exp(s) * np.array(_FR),
            [0.1, 0.3, 0.6, 1.2],
        ),
    ),  # 4*3*4*3*4 = 576 starts
    "chinchilla_no_floor": Form(
        "chinchilla_no_floor",
        lambda p, x, d: p["A"] * x ** -p["alpha"] + p["B"] * d ** -p["beta"],
        ("A", "alpha", "B", "beta"),
        needs_d=True,
        log_pred=lambda t, u, v: jnp.logaddexp(t[0] - _decay(t[1]) * u, t[2] - _decay(t[3]) * v),
        kinds=("coef", "decay", "coef", "decay"),
        anchor=lambda t, lx, ld: _shift(
            _shift(t, 0, _dec(t[..., 1]) * lx), 2, _dec(t[..., 3]) * ld
        ),
        grid=lambda s: _grid(
            np.exp(s) * np.array([0.05, 0.3, 0.8]),
            [0.1, 0.3, 0.6, 1.2],
            np.exp(s) * np.array([0.05, 0.3, 0.8]),
            [0.1, 0.3, 0.6, 1.2],
        ),
    ),  # 3*4*3*4 = 144 starts
}
# The two-input loss laws: compute_optimal and chinchilla_frontier take either (the floor E
# does not enter the compute-optimal allocation).
ND_FORMS = ("chinchilla", "chinchilla_no_floor")


def _get_form(form) -> Form:
    if isinstance(form, Form):
        return form
    if form not in FORMS:
        raise AnalysisError(
            f"unknown form {form!r}; allowed: {', '.join(FORMS)} or an analysis.Form"
        )
    return FORMS[form]


# --------------------------------------------------------------------------- the solver

_STEPS = (1.0, 0.3, 0.1)  # line-search trial steps, tried at once
_MAX_FAILS = 6
_XTOL = 1e-7  # a run that stalls this close to the optimum (internal coordinates) converged
_POLISH = 8  # distinct best grid results run again to the full budget
_JITTER = 0.3  # sd of the jitter (internal, log-scale coordinates) of extra bootstrap starts
_TRACES = {"count": 0}  # bumped at trace time; tests use it to check nothing recompiles
_SOLVERS: dict = {}
_PREDICTORS: dict = {}


class _Lane(NamedTuple):
    """The state of one L-BFGS run (one lane of the vmapped solver) between iterations."""

    theta: Any  # parameters [P] (internal coordinates)
    memory: Any  # optax L-BFGS curvature memory
    n_iter: Any  # iterations done
    f: Any  # objective / delta at theta
    grad: Any  # its gradient [P]
    last_change: Any  # decrease of f in the last iteration (0 when it failed)
    grad_norm: Any  # |grad|
    done: Any  # converged, or _MAX_FAILS failed steps in a row
    fails: Any  # failed steps in a row
    step_scale: Any  # multiplier of the trial step lengths _STEPS


def _bucket(n: int, lo: int = 8) -> int:
    """The padded length of an axis of length ``n``: ``lo`` when ``n <= lo``, else ``n``
    rounded up to a quarter of its power of two (4 buckets per octave: 8, 10, 12, 14, 16, 20,
    .., 512, 640, ..), so above ``lo`` at most 25% padding, while fits of similar size share a
    compiled program."""
    n = int(n)
    if n <= lo:
        return lo
    step = 1 << max(0, (n - 1).bit_length() - 3)
    return -(-n // step) * step


# Lanes per call of a compiled solver: every fit's runs go through programs of this width, in
# as many calls as it takes (the last padded), so each form compiles one program per row bucket.
_LANES = 128


def _solver(form: Form, max_iter: int, gtol: float, ftol: float):
    """``(theta0[B, S, P], w[B, n], mask[B, P], u[n], v[n], ly[B, n], delta, norm) -> dict of
    [B, S] results`` (numpy).  The objective is ``sum w * huber_delta(r) / norm``; coordinates
    where ``mask`` is 0 stay at their start (a profile fixes one parameter that way).

    The B x S runs are lanes of a vmapped ``while_loop`` (``_lane_solver``, compiled once per
    form and padded row count), ``_LANES`` lanes per call: the last call's lanes are padded
    with copies of the last lane, the rows (``_bucket``) with weight 0, and the budget and
    tolerances are data, so fits of any size, grid, polish, bootstrap or profile share one
    program per form and row bucket.  A call's loop ends when its slowest lane does, so
    narrower calls also stop earlier than one call over every lane."""
    core = _lane_solver(form)

    def solve(theta0, w, mask, u, v, ly, delta, norm):
        theta0, w, mask, ly = (np.asarray(a, np.float64) for a in (theta0, w, mask, ly))
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        B, S, P = theta0.shape
        n, L = u.shape[0], B * S
        n_p = _bucket(n)
        Lp = -(-L // _LANES) * _LANES
        lanes = np.concatenate([np.arange(L), np.full(Lp - L, L - 1)])
        row = np.repeat(np.arange(B), S)[lanes]  # each lane's resample
        cols = np.concatenate([np.arange(n), np.zeros(n_p - n, int)])  # pad rows: copies of 0
        w_p = np.where(np.arange(n_p) < n, w[:, cols], 0.0)
        theta_l, w_l, mask_l = theta0.reshape(L, P)[lanes], w_p[row], mask[row]
        ly_l = ly[:, cols][row]
        outs = [
            core(
                theta_l[i : i + _LANES],
                w_l[i : i + _LANES],
                mask_l[i : i + _LANES],
                u[cols],
                v[cols],
                ly_l[i : i + _LANES],
                np.float64(delta),
                np.float64(norm),
                np.int32(max_iter),
                np.float64(gtol),
                np.float64(ftol),
            )
            for i in range(0, Lp, _LANES)
        ]
        outs = jax.device_get(outs)
        return {
            k: np.concatenate([o[k] for o in outs])[:L].reshape((B, S) + np.shape(outs[0][k])[1:])
            for k in outs[0]
        }

    return solve


def _lane_solver(form: Form):
    """Jitted ``(theta0[L, P], w[L, n], mask[L, P], u[n], v[n], ly[L, n], delta, norm,
    max_iter, gtol, ftol) -> dict of [L] results``: one L-BFGS run per lane; cached per form,
    jit caches per shape."""
    if form in _SOLVERS:
        return _SOLVERS[form]
    precond = optax.scale_by_lbfgs(memory_size=10)
    steps = jnp.asarray(_STEPS)

    def one(theta0, w, mask, ly, u, v, delta, norm, max_iter, gtol, ftol):
        def obj(theta):
            r = ly - form._log_pred(theta, u, v)
            a = jnp.abs(r)
            h = jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
            return jnp.sum(w * h) / norm

        def value_and_grad(theta):
            f, g = jax.value_and_grad(obj)(theta)
            return f, g * mask

        f0, g0 = value_and_grad(theta0)
        init = _Lane(
            theta=theta0,
            memory=precond.init(theta0),
            n_iter=0,
            f=f0,
            grad=g0,
            last_change=jnp.asarray(jnp.inf, f0.dtype),
            grad_norm=jnp.linalg.norm(g0),
            done=jnp.asarray(False),
            fails=0,
            step_scale=jnp.asarray(1.0, f0.dtype),
        )

        def cond(lane: _Lane):
            return (~lane.done) & (lane.n_iter < max_iter)

        def body(lane: _Lane) -> _Lane:
            theta, g, f, scale = lane.theta, lane.grad, lane.f, lane.step_scale
            dirn, memory = precond.update(g, lane.memory, theta)  # L-BFGS two-loop: ~ H^-1 g
            slope = jnp.vdot(g, dirn)
            dirn = jnp.where(slope > 0, dirn, g / jnp.maximum(jnp.linalg.norm(g), 1e-300))
            slope = jnp.vdot(g, dirn)
            cand = theta[None] - (scale * steps)[:, None] * dirn[None]  # all step lengths at once
            f_cand = jax.vmap(obj)(cand)
            f_cand = jnp.where(jnp.isfinite(f_cand), f_cand, jnp.inf)
            armijo = f_cand <= f - 1e-4 * scale * steps * slope
            k = jnp.where(jnp.any(armijo), jnp.argmax(armijo), jnp.argmin(f_cand))
            new_theta = cand[k]
            new_f, new_g = value_and_grad(new_theta)
            new_gn = jnp.linalg.norm(new_g)
            # a step is accepted when it lowers f, or, at the rounding floor of f (within a few
            # ulps), when it halves the gradient: near the optimum of a sum of squares f stops
            # resolving decreases before the gradient reaches gtol
            flat = new_f <= f + 4 * jnp.finfo(f.dtype).eps * jnp.maximum(1.0, jnp.abs(f))
            ok = ((new_f < f) | (flat & (new_gn < 0.5 * lane.grad_norm))) & jnp.isfinite(new_gn)
            change = jnp.where(ok, jnp.maximum(f - new_f, 0.0), 0.0)
            conv = ok & (new_gn <= gtol) & (change <= ftol * jnp.maximum(1.0, jnp.abs(new_f)))

            def keep(new, old):
                return jnp.where(ok, new, old)

            # no trial step decreased f (a Huber kink, or a poor curvature estimate): forget the
            # curvature pairs (the next direction is steepest descent) and try 30x shorter
            # steps; _MAX_FAILS failures in a row end the run
            fails = jnp.where(ok, 0, lane.fails + 1)
            return _Lane(
                theta=keep(new_theta, theta),
                memory=jax.tree.map(keep, memory, precond.init(theta)),
                n_iter=lane.n_iter + 1,
                f=keep(new_f, f),
                grad=keep(new_g, g),
                last_change=change,
                grad_norm=keep(new_gn, jnp.linalg.norm(g)),
                done=conv | (fails >= _MAX_FAILS),
                fails=fails,
                step_scale=jnp.where(ok, jnp.minimum(1.0, scale * 100.0), scale * 0.03),
            )

        end = jax.lax.while_loop(cond, body, init)
        conv = (end.grad_norm <= gtol) & (
            end.last_change <= ftol * jnp.maximum(1.0, jnp.abs(end.f))
        )
        return dict(
            theta=end.theta,
            f=end.f,
            grad_norm=end.grad_norm,
            df=end.last_change,
            n_iter=end.n_iter,
            stalled=(~conv) & (end.fails >= _MAX_FAILS),
            grad=end.grad,
            converged=conv,
        )

    def solve(theta0, w, mask, u, v, ly, delta, norm, max_iter, gtol, ftol):
        _TRACES["count"] += 1
        return jax.vmap(one, in_axes=(0, 0, 0, 0) + (None,) * 7)(
            theta0, w, mask, ly, u, v, delta, norm, max_iter, gtol, ftol
        )

    _SOLVERS[form] = jax.jit(solve)
    return _SOLVERS[form]


# --------------------------------------------------------------------------- inputs


def _column(df, spec, role):
    if df is None:
        if isinstance(spec, str):
            raise AnalysisError(f"{role}={spec!r} is a column name but no table was given")
        return np.asarray(spec, dtype=float).ravel() if spec is not None else None
    if not isinstance(spec, str):
        return np.asarray(spec, dtype=float).ravel()
    if spec not in df.columns:
        raise AnalysisError(
            f"column {spec!r} ({role}) not in the table; it has: {', '.join(map(str, df.columns))}"
        )
    col = pd.to_numeric(df[spec], errors="coerce").to_numpy(dtype=float)
    if np.isnan(col).any():
        raise AnalysisError(
            f"column {spec!r} ({role}) has {int(np.isnan(col).sum())} NaN or non-numeric "
            f"value(s); drop or fill those rows first"
        )
    return col


def _inputs(df, form: Form, x, y, d):
    """Validated float64 arrays ``x, y, d`` (``d`` ones for one-input forms).  A loss per token
    of rows with several tokenizers is refused: their tokens differ, bits per byte do not."""
    per_token = ("eval_loss_nats", "select_loss_nats", "train_loss_final_nats")
    if isinstance(y, str) and y in per_token and df is not None and "tokenizer" in df:
        tokenizers = df["tokenizer"].fillna("bytes")  # records before 2026-12-03: bytes
        if tokenizers.nunique() > 1:
            names = ", ".join(map(str, tokenizers.unique()[:4]))
            raise AnalysisError(
                f"y = {y!r} is per token, and the rows have {tokenizers.nunique()} tokenizers "
                f"({names}): fit y='eval_bits_per_byte', the loss per byte of text, or one "
                "tokenizer at a time"
            )
    xs, ys = _column(df, x, "x"), _column(df, y, "y")
    ds = _column(df, d, "d") if form.needs_d else None
    if form.needs_d and ds is None:
        raise AnalysisError(f"form {form.name!r} needs d (training tokens)")
    named = {"x": xs, "y": ys} | ({"d": ds} if ds is not None else {})
    lens = {k: len(v) for k, v in named.items()}
    if len(set(lens.values())) > 1:
        raise AnalysisError(f"mismatched lengths: {lens}")
    for k, v in named.items():
        if not np.all(np.isfinite(v)):
            raise AnalysisError(f"{k} has NaN or infinite values")
        if np.any(v <= 0):
            raise AnalysisError(f"{k} must be positive; {int((v <= 0).sum())} value(s) are <= 0")
    if form.needs_d:  # a law in N and D is not identified unless both vary
        for name, spec, v in (("d", d, ds), ("x", x, xs)):
            if len(np.unique(v)) < 2:
                col = f"column {spec!r}" if isinstance(spec, str) else name
                raise AnalysisError(
                    f"form {form.name!r} needs at least 2 distinct values of {name} ({col}), "
                    f"got one ({v[0]:g}): the law is not identified"
                )
    if np.ptp(xs) == 0:
        raise AnalysisError(
            f"x ({_spec(x)}) has one distinct value ({xs[0]:g}): no law in x is identified"
        )
    if np.ptp(ys) == 0:
        raise AnalysisError(
            f"y ({_spec(y)}) is constant ({ys[0]:g}): a flat law has no scale or exponent to fit"
        )
    P = len(form.param_names)
    points = len(_point_ids(xs, ds if form.needs_d else None)[1])
    if points < P + 1:
        what = "(x, d) points" if form.needs_d else "sizes (x)"
        raise AnalysisError(
            f"form {form.name!r} has {P} parameters and needs at least {P + 1} distinct {what}, "
            f"got {points} (in {len(xs)} rows): the fit would interpolate"
        )
    return xs, ys, (ds if ds is not None else np.ones_like(xs))


def _spec(spec) -> str:
    return f"column {spec!r}" if isinstance(spec, str) else "the given values"


def _point_ids(xs, ds=None):
    """Per row, the index of its distinct point (x, or (x, d)); and the distinct points."""
    key = xs if ds is None else np.stack([xs, ds], 1)
    uniq, ids = np.unique(key, axis=0, return_inverse=True)
    return ids.reshape(-1), uniq


def _cluster_ids(df, cluster, n: int):
    """Cluster index per row (``[n]`` ints 0..G-1, numbered in order of first appearance), or
    None. ``cluster``: a column name or a list of column names of ``df`` (a cluster is one
    distinct combination of their values), or ``n`` labels (any hashable values)."""
    if cluster is None:
        return None
    if _names_columns(df, cluster):
        cols = [cluster] if isinstance(cluster, str) else list(cluster)
        if df is None:
            raise AnalysisError(f"cluster={cluster!r} names columns but no table was given")
        for c in cols:
            if c not in df.columns:
                raise AnalysisError(
                    f"column {c!r} (cluster) not in the table; it has: "
                    f"{', '.join(map(str, df.columns))}"
                )
            if df[c].isna().any():
                raise AnalysisError(f"column {c!r} (cluster) has {int(df[c].isna().sum())} NaN")
        ids = df.groupby(cols, sort=False).ngroup().to_numpy()
    else:
        labels = list(cluster)
        if len(labels) != n:
            raise AnalysisError(f"cluster has {len(labels)} labels for {n} rows")
        ids = pd.factorize(pd.Series(labels, dtype=object))[0]
    if ids.max() + 1 < 2:
        raise AnalysisError("cluster puts every row in one cluster; a bootstrap needs 2 or more")
    return np.asarray(ids, int)


def _names_columns(df, cluster) -> bool:
    """Whether ``cluster`` names columns (a string, or with a table a list of strings)."""
    return isinstance(cluster, str) or (
        df is not None
        and isinstance(cluster, (list, tuple))
        and len(cluster) > 0
        and all(isinstance(c, str) for c in cluster)
    )


def _cluster_name(df, cluster) -> str:
    if cluster is None:
        return "rows"
    if isinstance(cluster, str):
        return f"clusters of {cluster}"
    if _names_columns(df, cluster):
        return f"clusters of ({', '.join(cluster)})"
    return "clusters (given labels)"


def _weights(rng, n: int, n_bootstrap: int, gid=None) -> np.ndarray:
    """Bootstrap count weights ``[n_bootstrap, n]``: multinomial over the ``n`` rows, or over
    the clusters ``gid`` (every row of a cluster gets its cluster's count)."""
    if gid is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap)
    G = int(gid.max()) + 1
    return rng.multinomial(G, np.full(G, 1.0 / G), size=n_bootstrap)[:, gid]


def _LOG_PRED(fm: Form):
    """Jitted ``(theta[P], u[n], v[n]) -> log yhat[n]`` and its Jacobian, cached per form."""
    if ("pred", fm) not in _PREDICTORS:
        _PREDICTORS["pred", fm] = jax.jit(fm._log_pred)
        _PREDICTORS["jac", fm] = jax.jit(jax.jacfwd(fm._log_pred))
        _PREDICTORS["jacs", fm] = jax.jit(
            jax.vmap(jax.jacfwd(fm._log_pred), in_axes=(0, None, None))
        )
    return _PREDICTORS["pred", fm]


def _stalled_at_optimum(fm: Form, out: dict, w, mask, u, v, norm) -> np.ndarray:
    """For the solver's lanes that stalled (six failed steps in a row), whether they stalled at
    the optimum: the Gauss-Newton step ``(J'WJ / norm)^-1 grad`` over the free coordinates is
    below ``_XTOL``, so the gradient left is rounding in the objective, not distance. Computed
    after the solve (outside its loop, which it would make dearer to compile). ``[B, S]``."""
    st = out["stalled"]
    if not st.any():
        return st
    B, S, P = out["theta"].shape
    J = _jacobians(fm, out["theta"].reshape(B * S, P), u, v)  # every lane: one compiled shape
    b, s_ = np.nonzero(st)
    J = J.reshape(B, S, *J.shape[1:])[b, s_]  # [k, n, P]
    m = np.asarray(mask)[b]  # [k, P]
    G = np.einsum("kip,ki,kiq->kpq", J, np.asarray(w)[b], J) / norm
    G = G * m[:, :, None] * m[:, None, :] + np.eye(P) * (1 - m)[:, None, :]
    ok = np.zeros(st.shape, bool)
    with np.errstate(all="ignore"):  # pinv: a singular direction (no curvature) adds no step
        step = (np.linalg.pinv(G) @ (out["grad"][b, s_] * m)[..., None])[..., 0]
    ok[b, s_] = np.isfinite(step).all(-1) & (np.linalg.norm(step, axis=-1) <= _XTOL)
    return ok


def _jacobians(fm: Form, thetas, u, v) -> np.ndarray:
    """``d log yhat / d theta`` at each of ``thetas[B, P]``: ``[B, n, P]``, float64."""
    _LOG_PRED(fm)
    with jax.enable_x64(True):
        return np.asarray(
            _PREDICTORS["jacs", fm](
                np.asarray(thetas, np.float64),
                np.asarray(u, np.float64),
                np.asarray(v, np.float64),
            )
        )


def _jacobian(fm: Form, theta, u, v) -> np.ndarray:
    """``d log yhat / d theta``, ``[n, P]``, at ``theta`` (internal coordinates), float64."""
    _LOG_PRED(fm)
    with jax.enable_x64(True):
        a = (
            np.asarray(theta, np.float64),
            np.asarray(u, np.float64),
            np.asarray(v, np.float64),
        )
        return np.asarray(_PREDICTORS["jac", fm](*a))
