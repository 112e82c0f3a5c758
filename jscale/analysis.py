"""Power-law fits of loss and latency against model size, with bootstrap intervals.

Imports only numpy, pandas, jax and optax (never the model or training code), so it can be
used on any table: your own runs or published data.

Forms (``FORMS``; ``N`` = model size ``x``, ``D`` = tokens ``d``, all positive):

- ``"saturating"``   ``L = E + A * N**-alpha``                   params ``E, A, alpha``
- ``"power"``        ``y = k * N**b``                            params ``k, b``
- ``"offset_power"`` ``y = c + k * N**b`` (b of either sign)     params ``c, k, b``
- ``"affine"``       ``t = c + k * N``                            params ``c, k``
- ``"chinchilla"``   ``L = E + A / N**alpha + B / D**beta``     params ``E, A, alpha, B, beta``
- ``"chinchilla_no_floor"`` ``L = A / N**alpha + B / D**beta``  params ``A, alpha, B, beta``
- any ``Form(name, fn, param_names, init_grid=...)`` with ``fn(params: dict, x, d) -> y`` in JAX.

Objective: ``sum_i w_i * huber_delta(log y_i - log yhat_i)``, summed over rows (not averaged),
``delta = 1e-3`` by default. Built-in forms are fitted in log-sum-exp form with positive
coefficients (``E = exp(e)``, ...), ``N`` and ``D`` divided internally by their geometric means
(params are reported in the caller's units). Minimised in float64 (inside ``jax.enable_x64``; the
process-wide flag is left as it was) by L-BFGS: optax's L-BFGS preconditioner for the direction
and a backtracking line search that tries 3 step lengths at once (``_STEPS``, Armijo test); after
a failed step the curvature memory is reset and the steps shrink 0.03x, after a success they grow
100x (up to 1), and ``_MAX_FAILS`` failures in a row end the run.

Every L-BFGS run is a lane of one jitted, vmapped ``lax.while_loop`` that stops per lane when
``|grad| <= gtol`` and ``|f_prev - f| <= ftol * max(1, |f|)`` (both on the objective divided by
``delta``, which has the same minimiser), or at ``max_iter``. A run counts as converged only if
both tests pass at its last step.

Main fit: every point of the start grid (>= 500 for chinchilla) runs on all rows; the lowest
objective is kept. Bootstrap: ``n_bootstrap`` resamples of rows (or, with ``cluster``, of
clusters of rows: multinomial counts over clusters expanded to their rows), as multinomial count
weights (static shapes: one compiled function serves all resamples); each resample runs
``bootstrap_starts`` L-BFGS starts: the best distinct optima of the full-data grid, then
jittered copies of the best one (``_JITTER``), and keeps its lowest objective. Intervals are
percentiles over the resamples whose kept run converged; ``n_converged`` says how many.

Axes of a sweep: ``select_lr`` keeps the learning rate with the lowest selection-split loss
(never the test loss) per (size, token budget); ``isoflop`` is Hoffmann et al.'s approach 2
(a parabola in log N per compute budget, then N_opt ~ C^a); ``chinchilla_frontier`` is approach
3 (the exponents of a ``chinchilla`` fit); ``compare_approaches`` puts them side by side.
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

from jscale.schema import COMPUTE, LOSS, LR, PRECISION, SEED, SELECT, TOKENS, TOKENS_TARGET, N


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
# kinds of internal coordinate -> (to value, from value), numpy and jax alike
_KINDS = {
    "coef": (lambda t: np.exp(t), lambda v: np.log(v)),
    "decay": (lambda t: DECAY_MAX / (1 + np.exp(-t)), lambda v: np.log(v / (DECAY_MAX - v))),
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


def _solver(form: Form, max_iter: int, gtol: float, ftol: float):
    """Jitted ``(theta0[B, S, P], w[B, n], mask[B, P], u[n], v[n], ly[B, n], delta, norm) -> dict
    of [B, S] results``, one cached function per (form, budget, tolerances); jit caches per
    shape. The objective is ``sum w * huber_delta(r) / norm``; coordinates where ``mask`` is 0
    stay at their start (a profile fixes one parameter that way)."""
    key = (form, max_iter, gtol, ftol)
    if key in _SOLVERS:
        return _SOLVERS[key]
    precond = optax.scale_by_lbfgs(memory_size=10)
    steps = jnp.asarray(_STEPS)

    def one(theta0, w, mask, u, v, ly, delta, norm):
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
        # or stalled at the optimum: no step changes f in floating point any more, and the
        # Newton step there (exact Hessian, free coordinates) is below _XTOL: the gradient
        # left is rounding in f, not distance to the optimum
        H = jax.hessian(obj)(end.theta) * jnp.outer(mask, mask) + jnp.diag(1.0 - mask)
        newton = jnp.linalg.solve(H, end.grad)
        pd = jnp.all(jnp.linalg.eigvalsh(H) > 0)
        conv |= (end.fails >= _MAX_FAILS) & pd & (jnp.linalg.norm(newton) <= _XTOL)
        return dict(
            theta=end.theta,
            f=end.f,
            grad_norm=end.grad_norm,
            df=end.last_change,
            n_iter=end.n_iter,
            converged=conv,
        )

    def solve(theta0, w, mask, u, v, ly, delta, norm):
        _TRACES["count"] += 1
        per_start = jax.vmap(one, in_axes=(0, None, None, None, None, None, None, None))
        return jax.vmap(per_start, in_axes=(0, 0, 0, None, None, 0, None, None))(
            theta0, w, mask, u, v, ly, delta, norm
        )

    _SOLVERS[key] = jax.jit(solve)
    return _SOLVERS[key]


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
    """Validated float64 arrays ``x, y, d`` (``d`` ones for one-input forms)."""
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


# --------------------------------------------------------------------------- the fit


@dataclasses.dataclass(eq=False)
class Fit:
    """A fitted form.

    ``params``: point estimate on all rows, in the caller's units (coefficients at x = d = 1).
    ``params_ref``: the same law with its coefficients at the reference size ``reference``
    (``{"x": x_ref, "d": d_ref}``, the data's geometric means), where the data pin them: e.g.
    ``A_ref = A * x_ref**-alpha``, the reducible loss at the typical size. Exponents and additive
    constants are the same in both.

    ``intervals`` / ``intervals_ref``: ``level`` intervals by ``interval_method``:
    ``"profile"`` (profile likelihood of the least-squares fit on log y, with a Student-t
    ``n - P`` calibration) or ``"bootstrap"`` (percentiles over the ``n_converged`` converged
    resamples; NaN when none). ``bootstrap_intervals``: the bootstrap's percentile intervals
    whatever the method (NaN without resamples); prediction bands and derived quantities
    (``predict``, ``compute_optimal``) use the resamples. ``bootstrap_params``:
    ``[n_converged, P]``.

    ``residuals_log``: ``log y - log yhat`` per input row, in input order; ``r2_log``,
    ``rmse_log`` in log space. ``bootstrap_unit``: what the bootstrap resampled ("rows" or
    "clusters of ..."), and ``n_clusters`` how many clusters (0 for rows). ``warnings``: what
    the data identify only weakly, as sentences (empty for a well-identified law): a parameter
    at its bound or never moved from its start, 2 or fewer points beyond the parameters, a
    near-singular curvature, an interval that runs to a bound or spans more than a factor 10 at
    the reference size, another optimum nearly as good. ``diagnostics`` holds the numbers behind
    them (``condition``, ``correlation``, ``se_internal``, ``n_bootstrap_degenerate``, ...)."""

    form: str
    param_names: tuple
    params: dict
    intervals: dict
    level: float
    residuals_log: np.ndarray
    r2_log: float
    rmse_log: float
    n_points: int
    n_bootstrap: int
    n_converged: int
    converged: bool
    objective: float
    diagnostics: dict
    bootstrap_params: np.ndarray
    _form: Form = dataclasses.field(repr=False)
    _theta: np.ndarray = dataclasses.field(repr=False)
    _boot_theta: np.ndarray = dataclasses.field(repr=False)
    _scale: tuple = dataclasses.field(repr=False)
    bootstrap_unit: str = "rows"
    n_clusters: int = 0
    warnings: list = dataclasses.field(default_factory=list)
    interval_method: str = "bootstrap"
    loss: str = "least squares"
    params_ref: dict = dataclasses.field(default_factory=dict)
    intervals_ref: dict = dataclasses.field(default_factory=dict)
    bootstrap_intervals: dict = dataclasses.field(default_factory=dict)
    reference: dict = dataclasses.field(default_factory=dict)

    def _log_y(self, theta, x, d):
        u, v = self._form._prep(x, d, *self._scale)
        if self._form not in _PREDICTORS:
            _PREDICTORS[self._form] = jax.jit(
                jax.vmap(self._form._log_pred, in_axes=(0, None, None))
            )
        with jax.enable_x64(True):
            theta_2d = jnp.atleast_2d(jnp.asarray(theta, jnp.float64))
            return np.asarray(
                _PREDICTORS[self._form](
                    theta_2d, jnp.asarray(u, jnp.float64), jnp.asarray(v, jnp.float64)
                )
            )

    def predict(self, x_new, d_new=None, level=None) -> pd.DataFrame:
        """Predictions at sizes ``x_new`` (and tokens ``d_new`` for two-input forms), with
        bootstrap percentile bands at ``level`` (default: the fit's). Columns x, [d,] y,
        y_lo, y_hi."""
        level = self.level if level is None else level
        x = np.atleast_1d(np.asarray(x_new, float))
        if self._form.needs_d:
            if d_new is None:
                raise AnalysisError(f"form {self.form!r} needs d_new")
            x, d = np.broadcast_arrays(x, np.atleast_1d(np.asarray(d_new, float)))
        else:
            d = np.ones_like(x)
        if np.any(~np.isfinite(x) | (x <= 0)) or np.any(~np.isfinite(d) | (d <= 0)):
            raise AnalysisError("x_new and d_new must be finite and positive")
        out = {"x": x} | ({"d": d} if self._form.needs_d else {})
        out["y"] = np.exp(self._log_y(self._theta, x, d)[0])
        if len(self._boot_theta):
            ys = np.exp(self._log_y(self._boot_theta, x, d))
            q = 50 * (1 - level)
            out["y_lo"], out["y_hi"] = np.percentile(ys, [q, 100 - q], axis=0)
        else:
            out["y_lo"] = out["y_hi"] = np.full_like(x, np.nan)
        return pd.DataFrame(out)

    def summary(self) -> dict:
        """One flat row: form, n_points, each param with _lo/_hi, fit quality, convergence."""
        row = {"form": self.form, "n_points": self.n_points}
        for k in self.param_names:
            row[k], (row[k + "_lo"], row[k + "_hi"]) = self.params[k], self.intervals[k]
        return row | {
            "r2_log": self.r2_log,
            "rmse_log": self.rmse_log,
            "objective": self.objective,
            "converged": self.converged,
            "n_bootstrap": self.n_bootstrap,
            "n_converged": self.n_converged,
            "level": self.level,
            "interval_method": self.interval_method,
            "bootstrap_unit": self.bootstrap_unit,
            "n_clusters": self.n_clusters,
            "n_warnings": len(self.warnings),
        }


def _distinct_best(theta, f, k, tol=1e-3):
    """Indices of up to ``k`` lowest-objective rows of ``theta`` at least ``tol`` apart."""
    chosen = []
    for i in np.argsort(f):
        if not np.isfinite(f[i]):
            break
        if all(np.max(np.abs(theta[i] - theta[j])) > tol for j in chosen):
            chosen.append(i)
        if len(chosen) == k:
            break
    return chosen


_LSQ_DELTA = 1e3  # "Huber" kink of the least-squares objective: beyond any log residual
_LSQ_NORM = 1e-3  # its scale divisor: gtol / ftol mean what they mean for Huber delta 1e-3


def fit(
    df=None,
    form="saturating",
    x=N,
    y=LOSS,
    d=TOKENS,
    *,
    n_bootstrap=1000,
    huber_delta=None,
    interval=None,
    seed=0,
    level=0.95,
    bootstrap_starts=2,
    max_iter=500,
    grid_iter=100,
    gtol=1e-5,
    ftol=1e-10,
    cluster=None,
    weights=None,
) -> Fit:
    """Fit ``form`` to ``y`` against ``x`` (and ``d``): columns of ``df`` or, with ``df=None``,
    1-D arrays of equal length, all positive. See the module docstring for the method.

    ``huber_delta``: None (default) fits least squares on log y, the Gaussian likelihood of
    log-normal noise; a number fits the Huber loss with that kink (Hoffmann et al. used 1e-3,
    which on residuals of 1-3% acts as least absolute deviations: robust to outliers, but its
    intervals need the bootstrap).

    ``interval``: how ``Fit.intervals`` are made. ``"profile"``: profile likelihood, the values of
    each parameter whose best fit with that parameter fixed is within ``t_{n-P}(level)**2`` (in
    units of the residual variance) of the optimum; with ``cluster``, each parameter's statistic
    rescaled by its model-based over cluster-robust variance and compared with ``t_{G-1}``
    (Royall's robust likelihood; G clusters). See ``benchmarks/fit_calibration.md`` for its
    coverage. ``"bootstrap"``: percentiles over ``n_bootstrap``
    resamples (rows, or clusters with ``cluster``), as in the published Chinchilla replication.
    ``"wild"``: the wild bootstrap-t: the design fixed, each row's (or, with ``cluster``, each
    cluster's) bias-reduced residuals multiplied by random weights, each refit studentized by
    its cluster-robust SE; calibrated for rows that share noise within clusters (see
    ``benchmarks/fit_calibration.md``). ``"none"``: no intervals (NaN; the point estimate
    only, fastest). None (default): profile for least squares, bootstrap for the Huber loss.
    Prediction bands and derived quantities (``predict``, ``compute_optimal``) always use the
    ``n_bootstrap`` resamples (rows, clusters, or wild with ``"wild"``) as percentiles.

    ``weights``: per-row weights of the objective (a column name or ``[n]`` values, finite and
    > 0; e.g. the number of seeds behind a mean, or 1 / variance of a measurement); a row of
    weight 2 counts as that row twice. Bootstrap resamples multiply them by their counts.

    ``n_bootstrap`` row resamples (0 for none; prediction bands then are NaN); each runs
    ``bootstrap_starts`` L-BFGS starts (the best distinct full-data optima, then jittered copies
    of the best). ``gtol`` bounds the gradient norm and ``ftol`` the relative last objective
    change of the objective divided by ``huber_delta`` (1e-3 for least squares); intervals use
    only the resamples that pass both.

    ``cluster``: None resamples rows. A column name or list of names (or, with ``df=None``,
    one label per row) resamples clusters instead: multinomial counts over the G distinct
    clusters, each row weighted by its cluster's count, so all rows of a cluster move together
    (same static shapes, same compiled solver). Use it when rows are not independent, e.g.
    ``cluster=[N, SEED]``: the token-budget branches of one trained model share a trunk."""
    fm = _get_form(form)
    xs, ys, ds = _inputs(df, fm, x, y, d)
    gid = _cluster_ids(df, cluster, len(xs))
    rw = np.ones(len(xs)) if weights is None else _column(df, weights, "weights")
    if len(rw) != len(xs) or not np.all(np.isfinite(rw) & (rw > 0)):
        raise AnalysisError(
            f"weights ({_spec(weights)}) must be {len(xs)} finite values > 0, one per row"
        )
    lsq = huber_delta is None
    if interval is None:
        interval = "profile" if lsq else "bootstrap"
    if interval not in ("profile", "bootstrap", "wild", "none"):
        raise AnalysisError(
            f"interval={interval!r}; allowed: 'profile', 'bootstrap', 'wild', 'none' or None"
        )
    if interval == "profile" and not lsq:
        raise AnalysisError(
            "interval='profile' needs the least-squares objective (huber_delta=None); "
            "with a Huber loss use interval='bootstrap'"
        )
    if (not lsq and not huber_delta > 0) or not 0 < level < 1 or n_bootstrap < 0:
        raise AnalysisError("need huber_delta > 0 (or None), 0 < level < 1, n_bootstrap >= 0")
    if bootstrap_starts < 1:
        raise AnalysisError("need bootstrap_starts >= 1")
    if interval == "wild" and not lsq:
        raise AnalysisError(
            "interval='wild' needs the least-squares objective (huber_delta=None): Huber "
            "residuals at delta 1e-3 are shrunk towards 0 and would give too narrow intervals"
        )
    if interval in ("bootstrap", "wild") and n_bootstrap == 0:
        interval = "none"
    n, P = len(xs), len(fm.param_names)
    scale = (float(np.mean(np.log(xs))), float(np.mean(np.log(ds)))) if fm.log_pred else (0.0, 0.0)
    u, v = fm._prep(xs, ds, *scale)
    ly = np.log(ys)
    starts = fm._starts(float(np.mean(ly)))
    solve = _solver(fm, int(max_iter), float(gtol), float(ftol))
    gsolve = _solver(fm, int(min(grid_iter, max_iter)), float(gtol), float(ftol))
    delta, norm = (_LSQ_DELTA, _LSQ_NORM) if lsq else (float(huber_delta), float(huber_delta))
    with jax.enable_x64(True):

        def run(th0, w, sol=solve, mask=None, uv=(u, v), ys=None):
            th0 = jnp.asarray(th0)
            B = th0.shape[0]
            mask = jnp.ones((B, P)) if mask is None else jnp.asarray(mask)
            ys = np.broadcast_to(ly, (B, len(ly))) if ys is None else ys
            a = (jnp.asarray(uv[0]), jnp.asarray(uv[1]), jnp.asarray(ys))
            out = sol(th0, jnp.asarray(w, jnp.float64), mask, *a, delta, norm)
            return {k: np.asarray(b) for k, b in jax.device_get(out).items()}

        w_rows = rw[None]
        g = run(starts[None], w_rows, gsolve)  # the full grid, `grid_iter` steps each ...
        gf = np.where(np.isfinite(g["f"][0]), g["f"][0], np.inf)
        if not np.isfinite(gf).any():
            raise AnalysisError(f"no start of form {fm.name!r} gave a finite objective")
        top = _distinct_best(g["theta"][0], gf, _POLISH)
        p = run(g["theta"][0][top][None], w_rows)  # ... then the best few polished
        p = {k: a[0] for k, a in p.items()}
        pf = np.where(np.isfinite(p["f"]), p["f"], np.inf)
        best = int(np.argmin(pf))
        theta = p["theta"][best]
        lyhat = np.asarray(_LOG_PRED(fm)(jnp.asarray(theta), jnp.asarray(u), jnp.asarray(v)))
        res = ly - lyhat
        curv = _curvature(fm, theta, u, v, rw, res, n - P)
        boot_theta = np.zeros((0, P))
        n_conv, boot_iters, n_degenerate = 0, 0, 0
        if n_bootstrap:
            rng = np.random.default_rng(seed)
            ys = None
            if interval == "wild":  # the design fixed; residuals flipped per cluster (or row)
                w = np.ones((n_bootstrap, n))
                cid = np.arange(n) if gid is None else gid
                ys = (
                    lyhat[None]
                    + _wild_signs(rng, n_bootstrap, int(cid.max()) + 1)[:, cid]
                    * _cluster_adjusted(res, curv, rw, cid)[None]
                )
            else:
                w = _weights(rng, n, n_bootstrap, gid)
            seeds = p["theta"][_distinct_best(p["theta"], pf, bootstrap_starts)]
            s0 = np.repeat(seeds[None], n_bootstrap, 0)
            if len(seeds) < bootstrap_starts:  # fill with jittered full-data optima
                jit_ = theta + rng.normal(
                    0, _JITTER, (n_bootstrap, bootstrap_starts - len(seeds), P)
                )
                s0 = np.concatenate([s0, jit_], 1)
            b = run(s0, w * rw[None], ys=ys)
            k = np.argmin(np.where(np.isfinite(b["f"]), b["f"], np.inf), axis=1)

            def pick(a):
                return np.take_along_axis(a, k.reshape((-1, 1) + (1,) * (a.ndim - 2)), 1)[:, 0]

            conv = pick(b["converged"]) & np.isfinite(pick(b["f"]))
            # a resample with fewer distinct points than parameters + 1 interpolates: rejected
            pid = _point_ids(xs, ds if fm.needs_d else None)[0]
            drawn = (w > 0) @ np.eye(int(pid.max()) + 1)[pid] > 0
            enough = drawn.sum(1) >= P + 1
            n_degenerate = int((~enough).sum())
            conv &= enough
            boot_theta = pick(b["theta"])[conv]
            n_conv, boot_iters = int(conv.sum()), int(np.max(b["n_iter"]))
        prof = {}
        if interval == "profile":
            prof = _profile(
                run, fm, theta, float(p["f"][best]), curv, scale, u, v, level, norm, rw, res, gid
            )
        elif interval == "wild" and n_conv > 1:
            cid = np.arange(n) if gid is None else gid
            prof = _wild_t(fm, theta, boot_theta, ys[conv], ly, u, v, rw, cid, level, scale)
    user = fm._to_user(theta, *scale)
    boot_user = fm._to_user(boot_theta, *scale).reshape(-1, P)
    q = 50 * (1 - level)
    iv = np.percentile(boot_user, [q, 100 - q], axis=0) if n_conv else np.full((2, P), np.nan)
    bi = {k: (float(iv[0, i]), float(iv[1, i])) for i, k in enumerate(fm.param_names)}
    ref_vals = fm._values(theta)
    if n_conv:
        ivr = np.percentile(fm._values(boot_theta).reshape(-1, P), [q, 100 - q], axis=0)
    else:
        ivr = np.full((2, P), np.nan)
    if interval == "profile" or (interval == "wild" and prof):
        intervals = {k: prof["user"][k] for k in fm.param_names}
        intervals_ref = {k: prof["ref"][k] for k in fm.param_names}
    elif interval in ("none", "wild"):
        intervals = intervals_ref = {k: (np.nan, np.nan) for k in fm.param_names}
    else:
        intervals = bi
        intervals_ref = {
            k: (float(ivr[0, i]), float(ivr[1, i])) for i, k in enumerate(fm.param_names)
        }
    fit_ = Fit(
        form=fm.name,
        param_names=fm.param_names,
        params={k: float(user[i]) for i, k in enumerate(fm.param_names)},
        intervals=intervals,
        level=level,
        residuals_log=res,
        r2_log=float(1 - np.sum(res**2) / np.sum((ly - ly.mean()) ** 2)),
        rmse_log=float(np.sqrt(np.mean(res**2))),
        n_points=n,
        n_bootstrap=int(n_bootstrap),
        n_converged=n_conv,
        converged=bool(p["converged"][best]),
        objective=float(p["f"][best] * norm),
        diagnostics=dict(
            n_starts=len(starts),
            n_starts_converged=int(g["converged"].sum()),
            n_polished=len(top),
            n_polished_converged=int(p["converged"].sum()),
            grad_norm=float(p["grad_norm"][best]),
            last_change=float(p["df"][best]),
            n_iter=int(p["n_iter"][best]),
            max_iter=int(max_iter),
            bootstrap_starts=int(bootstrap_starts),
            bootstrap_max_iter_used=boot_iters,
            n_bootstrap_degenerate=n_degenerate,
            gtol=gtol,
            ftol=ftol,
            huber_delta=huber_delta,
            residual_sd_log=curv["s"],
            mean_log_y=float(np.mean(ly)),
            condition=curv["condition"],
            sensitivity=curv["sens"],
            correlation=curv["corr"],
            se_internal=curv["se"],
            start=starts[top[best]] if fm.log_pred is None else fm._values(starts[top[best]]),
            other_optima=_other_optima(fm, p["theta"], pf, best, curv, norm),
            profile_open=prof.get("open", {}),
            profile_pieces=prof.get("pieces", {}),
            profile_better=prof.get("better", False),
            resamples_at_bound=(
                {k: int(n) for k, n in zip(fm.param_names, prof["at_bound"].sum(0)) if n}
                if "at_bound" in prof
                else {}
            ),
        ),
        bootstrap_params=boot_user,
        _form=fm,
        _theta=theta,
        _boot_theta=boot_theta,
        _scale=scale,
        bootstrap_unit=(
            "wild bootstrap-t over " + _cluster_name(df, cluster)
            if interval == "wild"
            else _cluster_name(df, cluster)
        ),
        n_clusters=0 if gid is None else int(gid.max()) + 1,
        interval_method=interval,
        loss="least squares" if lsq else f"huber (delta {huber_delta:g})",
        params_ref={k: float(ref_vals[i]) for i, k in enumerate(fm.param_names)},
        intervals_ref=intervals_ref,
        bootstrap_intervals=bi,
        reference={"x": float(np.exp(scale[0]))}
        | ({"d": float(np.exp(scale[1]))} if fm.needs_d else {}),
    )
    fit_.warnings = _weak_identification(fit_, fm, xs, ds, starts[top[best]])
    return fit_


def _LOG_PRED(fm: Form):
    """Jitted ``(theta[P], u[n], v[n]) -> log yhat[n]`` and its Jacobian, cached per form."""
    if ("pred", fm) not in _PREDICTORS:
        _PREDICTORS["pred", fm] = jax.jit(fm._log_pred)
        _PREDICTORS["jac", fm] = jax.jit(jax.jacfwd(fm._log_pred))
        _PREDICTORS["jacs", fm] = jax.jit(
            jax.vmap(jax.jacfwd(fm._log_pred), in_axes=(0, None, None))
        )
    return _PREDICTORS["pred", fm]


def _jacobian(fm: Form, theta, u, v) -> np.ndarray:
    """``d log yhat / d theta``, ``[n, P]``, at ``theta`` (internal coordinates), float64."""
    _LOG_PRED(fm)
    with jax.enable_x64(True):
        a = (
            jnp.asarray(theta, jnp.float64),
            jnp.asarray(u, jnp.float64),
            jnp.asarray(v, jnp.float64),
        )
        return np.asarray(_PREDICTORS["jac", fm](*a))


def _wild_signs(rng, B: int, G: int) -> np.ndarray:
    """``[B, G]`` wild-bootstrap multipliers (mean 0, variance 1): Rademacher signs with 12 or
    more clusters; with fewer, Webb's six-point distribution (+-sqrt(1/2), +-1, +-sqrt(3/2)),
    which has 6^G patterns instead of 2^G."""
    if G >= 12:
        return rng.choice([-1.0, 1.0], size=(B, G))
    return rng.choice(np.sqrt([0.5, 1.0, 1.5]), size=(B, G)) * rng.choice([-1.0, 1.0], (B, G))


def _cluster_adjusted(res, curv, w, cid) -> np.ndarray:
    """Residuals un-shrunk per cluster (CR2, Bell and McCaffrey 2002): ``(I - H_gg)^-1/2 r_g``
    with ``H_gg = W_g^1/2 J_g (J'WJ)^-1 J_g' W_g^1/2`` the cluster's block of the hat matrix.
    A fit absorbs part of each cluster's shared noise (more when there are few clusters per
    parameter); multiplying raw residuals by wild weights would then understate the noise."""
    J = curv["J"]
    bread = np.linalg.pinv(J.T @ (w[:, None] * J))
    out = np.array(res, float)
    sw = np.sqrt(w)
    for g in np.unique(cid):
        i = np.flatnonzero(cid == g)
        Jg = sw[i, None] * J[i]
        H = Jg @ bread @ Jg.T
        ev, Q = np.linalg.eigh(np.eye(len(i)) - H)
        inv_sqrt = Q @ np.diag(1 / np.sqrt(np.clip(ev, 1e-3, None))) @ Q.T
        out[i] = (inv_sqrt @ (sw[i] * res[i])) / sw[i]
    return out


def _sandwich(J, r, w, cid) -> np.ndarray:
    """Cluster-robust covariance ``[..., P, P]`` of a least-squares fit from its Jacobian
    ``J[..., n, P]`` and residuals ``r[..., n]`` (weights ``w[n]``, clusters ``cid[n]``), with
    bias-reduced residuals (CR2: ``(I - H_gg)^-1/2 r_g``, see ``_cluster_adjusted``):
    ``(J'WJ)^-1 (sum_g s_g s_g') (J'WJ)^-1``, ``s_g = sum_{i in g} w_i J_i r~_i``."""
    sw = np.sqrt(w)
    Jw = J * w[:, None]
    bread = np.linalg.pinv(np.einsum("...ip,...iq->...pq", Jw, J))
    meat = 0.0
    for g in np.unique(cid):
        i = np.flatnonzero(cid == g)
        Jg = sw[i, None] * J[..., i, :]  # [..., m, P]
        H = Jg @ bread @ np.swapaxes(Jg, -1, -2)
        ev, Q = np.linalg.eigh(np.eye(len(i)) - H)
        inv_sqrt = Q @ (Q * (1 / np.sqrt(np.clip(ev, 1e-3, None)))[..., None, :]).swapaxes(-1, -2)
        rg = (inv_sqrt @ (sw[i] * r[..., i])[..., None])[..., 0]  # [..., m]
        sg = np.einsum("...mp,...m->...p", Jg, rg)
        meat = meat + sg[..., :, None] * sg[..., None, :]
    return bread @ meat @ bread


def _wild_t(fm: Form, theta, boot, ys, ly, u, v, w, cid, level, scale) -> dict:
    """Wild (cluster) bootstrap-t intervals (Cameron, Gelbach and Miller 2008): each resample's
    estimate is studentized by its own cluster-robust SE, ``t* = (theta* - theta) / se*``, and
    the interval is ``theta - t*_{(1+level)/2} se, theta - t*_{(1-level)/2} se`` with ``se`` the
    data's own. The studentization carries the uncertainty of the noise scale (few clusters,
    few points beyond the parameters) that percentile intervals miss. Internal coordinates at
    the reference (``"ref"``) and re-anchored at x = d = 1 (``"user"``), mapped to values."""
    _LOG_PRED(fm)
    jac = _PREDICTORS["jacs", fm]
    with jax.enable_x64(True):
        uu, vv = jnp.asarray(u, jnp.float64), jnp.asarray(v, jnp.float64)
        th_all = jnp.asarray(np.vstack([theta[None], boot]), jnp.float64)
        J = np.asarray(jac(th_all, uu, vv))  # [1 + B, n, P]
        pred = np.asarray(jax.vmap(fm._log_pred, in_axes=(0, None, None))(th_all, uu, vv))
    r = np.vstack([ly[None], ys]) - pred
    V = _sandwich(J, r, w, cid)  # [1 + B, P, P]
    # a resample whose optimum sits at a parameter's bound has no curvature there: its SE is
    # meaningless and its t* explodes; such resamples are left out of the t* quantiles and
    # counted (a parameter often at its bound is not identified: said in the warnings)
    at_bound = _at_bound(fm, boot, float(np.mean(ly)))
    out = {"ref": {}, "user": {}, "at_bound": at_bound}
    q = np.array([50 * (1 + level), 50 * (1 - level)])
    for label in ("ref", "user"):
        if label == "user" and fm.anchor is None:
            out["user"] = out["ref"]
            break
        if label == "user":  # re-anchor the estimates; covariances through the anchor's Jacobian
            T = fm._anchored(np.vstack([theta[None], boot]), *scale)
            eps = 1e-6
            A = np.stack(
                [
                    (
                        fm._anchored(np.vstack([theta[None], boot]) + eps * e, *scale)
                        - fm._anchored(np.vstack([theta[None], boot]) - eps * e, *scale)
                    )
                    / (2 * eps)
                    for e in np.eye(len(theta))
                ],
                -1,
            )  # [1 + B, P, P]
            Vl = A @ V @ np.swapaxes(A, -1, -2)
        else:
            T, Vl = np.vstack([theta[None], boot]), V
        se = np.sqrt(np.clip(np.diagonal(Vl, axis1=-2, axis2=-1), 0, None))  # [1 + B, P]
        with np.errstate(divide="ignore", invalid="ignore"):
            tstar = ((T[1:] - T[0]) / se[1:])[~at_bound.any(1)]
        for j, name in enumerate(fm.param_names):
            t = tstar[:, j][np.isfinite(tstar[:, j])]
            kind = fm.kinds[j] if fm.log_pred is not None else "free"
            if len(t) < 2 or not se[0, j] > 0:
                lo = hi = T[0, j]
            else:
                t_hi, t_lo = np.percentile(t, q)
                lo, hi = T[0, j] - t_hi * se[0, j], T[0, j] - t_lo * se[0, j]
            v_lo, v_hi = (_KINDS[kind][0](np.array(e)) for e in (lo, hi))
            out[label][name] = (float(v_lo), float(v_hi))
    return out


def _at_bound(fm: Form, theta, mean_log_y: float) -> np.ndarray:
    """``[B, P]``: whether each parameter of each internal ``theta[B, P]`` is at its bound (a
    coefficient below 0.01% of the data's scale, a bounded exponent within 0.03% of an end)."""
    theta = np.atleast_2d(theta)
    if fm.log_pred is None:
        return np.zeros(theta.shape, bool)
    out = np.zeros(theta.shape, bool)
    for i, kind in enumerate(fm.kinds):
        if kind == "coef":
            out[:, i] = theta[:, i] < mean_log_y + np.log(1e-4)
        elif kind in ("decay", "slope"):
            out[:, i] = np.abs(theta[:, i]) > 8
    return out


def _t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (p > 0.5), by
    bisection on its CDF ``1 - I_{dof/(dof+t^2)}(dof/2, 1/2) / 2``."""
    from jax.scipy.special import betainc

    lo, hi = 0.0, 1e4
    with jax.enable_x64(True):
        for _ in range(3):
            t = np.linspace(lo, hi, 2001)
            cdf = 1 - 0.5 * np.asarray(betainc(dof / 2, 0.5, dof / (dof + t * t)))
            i = int(np.searchsorted(cdf, p))
            lo, hi = t[max(i - 1, 0)], t[min(i, len(t) - 1)]
    return float(0.5 * (lo + hi))


def _curvature(fm: Form, theta, u, v, w, res, dof: int) -> dict:
    """Gauss-Newton curvature of the least-squares objective at ``theta`` (internal
    coordinates): covariance ``s^2 (J' W J)^-1`` with ``s^2 = sum w r^2 / (n - P)``, standard
    errors, the correlation matrix, and the condition number of ``J' W J`` scaled to unit
    diagonal (1 for orthogonal parameters; large when the data cannot tell parameters apart;
    inf when a parameter does not move the prediction at all)."""
    J = _jacobian(fm, theta, u, v)
    G = J.T @ (w[:, None] * J)
    s2 = float(np.sum(w * res**2) / max(dof, 1))
    dg = np.sqrt(np.diag(G))
    P = len(theta)
    if np.all(dg > 0) and np.all(np.isfinite(G)):
        Gs = G / np.outer(dg, dg)
        ev = np.linalg.eigvalsh(Gs)
        cond = float(ev[-1] / ev[0]) if ev[0] > 0 else np.inf
    else:
        cond = np.inf
    try:
        cov = s2 * np.linalg.inv(G) if np.isfinite(cond) and cond < 1e14 else None
    except np.linalg.LinAlgError:
        cov = None
    if cov is None or not np.all(np.isfinite(np.diag(cov))) or np.any(np.diag(cov) < 0):
        cov = None
        se = np.full(P, np.nan)
        corr = np.full((P, P), np.nan)
    else:
        se = np.sqrt(np.diag(cov))
        corr = cov / np.outer(se, se) if np.all(se > 0) else np.full((P, P), np.nan)
    if cov is not None:  # Gauss-Newton hat matrix diagonal: w_i J_i (J'WJ)^-1 J_i'
        lev = w * np.einsum("ip,pq,iq->i", J, cov / s2 if s2 > 0 else np.linalg.pinv(G), J)
    else:
        lev = np.zeros(len(w))
    return dict(
        J=J,
        s=float(np.sqrt(s2)),
        s2=s2,
        dof=dof,
        cov=cov,
        se=se,
        corr=corr,
        condition=cond,
        sens=dg,
        leverage=lev,
    )


# multiples of t * se at which each parameter is profiled, each side (the crossing of the
# t^2 level is interpolated in the signed root of the profile statistic, nearly linear there)
_PROFILE_STEPS = np.array([0.5, 0.8, 0.95, 1.05, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0])


def _profile(
    run, fm: Form, theta, f_best, curv, scale, u, v, level, norm, w, res, cid=None
) -> dict:
    """Profile-likelihood intervals of every parameter at the reference (``"ref"``) and in the
    caller's units (``"user"``: coefficients at x = d = 1), ``{name: (lo, hi)}``. The statistic
    ``(RSS(theta_j) - RSS) / s^2`` is compared with ``t_{n-P}((1 + level) / 2)^2``. ``"open"``
    names the sides where it never reaches that level (the interval runs to the parameter's
    bound); ``"pieces"`` the parameters whose profile dips below the level again further out
    (another basin); ``"better"`` whether a profile found a lower objective than the fit.

    With clusters ``cid`` (rows that share noise), the statistic of parameter j is rescaled by
    ``V_model_jj / V_robust_jj`` (the model-based over the cluster-robust CR2 variance: Royall's
    robust likelihood, 1986) and compared with ``t_{G-1}``, G clusters: the profile keeps its
    shape (asymmetric, bounded where the law is) and takes its width from the clusters."""
    P = len(theta)
    names = fm.param_names
    G_cl = None if cid is None else int(cid.max()) + 1
    q = _t_quantile(0.5 * (1 + level), curv["dof"] if cid is None else max(G_cl - 1, 1))
    s2 = curv["s2"]
    out = {"ref": {}, "user": {}, "open": {}, "pieces": {}, "better": False}
    exact = s2 < 1e-14  # an exact fit: the profile cannot resolve the interval; use t * se
    se = curv["se"]
    steps = np.concatenate([-_PROFILE_STEPS[::-1], _PROFILE_STEPS])
    anchors = [("ref", theta, u)]
    moved = fm.anchor is not None and np.any(fm._anchored(theta, *scale) != theta)
    if moved:  # coefficients at x = d = 1: the same profile with the data re-anchored there
        anchors.append(("user", fm._anchored(theta, *scale), u + scale[0]))
    for label, th, uu in anchors:
        vv = v + (scale[1] if label == "user" else 0.0)
        J = _jacobian(fm, th, uu, vv)
        G = J.T @ (w[:, None] * J)
        try:
            cov = s2 * np.linalg.inv(G)
            ratio = np.ones(P)
            if cid is not None:  # the grid around the robust SE; the statistic rescaled below
                rob = _sandwich(J, res, w, cid)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.diag(cov) / np.diag(rob)
                cov = rob
            with np.errstate(invalid="ignore"):
                sej = np.sqrt(np.diag(cov))
        except np.linalg.LinAlgError:
            cov, sej, ratio = None, np.full(P, np.nan), np.ones(P)
        bad = ~np.isfinite(sej) | (sej <= 0)
        sej = np.where(bad, 1.0 / max(q, 1.0), sej)
        vals = th[:, None] + (q * sej)[:, None] * steps[None, :]  # [P, K]
        K = len(steps)
        starts = np.repeat(th[None, None, :], P * K, 0).repeat(2, 1)  # [P*K, 2, P]
        mask = np.ones((P * K, P))
        for j in range(P):
            rows = slice(j * K, (j + 1) * K)
            dj = vals[j] - th[j]
            starts[rows, 0, j] = vals[j]
            starts[rows, 1, :] = th[None, :] + (
                np.outer(dj, cov[:, j] / cov[j, j]) if cov is not None and not bad[j] else 0.0
            )
            starts[rows, 1, j] = vals[j]
            mask[rows, j] = 0.0
        if exact:
            T = np.full((P, K), np.inf)
        else:
            r = run(starts, np.ones((P * K, len(uu))), mask=mask, uv=(uu, vv))
            f = np.where(np.isfinite(r["f"]), r["f"], np.inf).min(1).reshape(P, K)
            T = 2 * norm * (f - f_best) / s2
            T = T * np.where(np.isfinite(ratio) & (ratio > 0), ratio, 1.0)[:, None]
        if np.any(T < -1e-6 * max(1.0, curv["dof"])):
            out["better"] = True
        if label == "user":
            T_open = None  # open sides are judged at the reference (said once per parameter)
        else:
            T_open = T
        for j, name in enumerate(names):
            if label == "user" and name in out["user"]:
                continue
            kind = fm.kinds[j] if fm.log_pred is not None else "free"
            ends = []
            for side in (-1, 1):
                idx = np.where(steps * side > 0)[0]
                idx = idx[np.argsort(np.abs(steps[idx]))]
                prev_val, prev_root = th[j], 0.0
                end = None
                for i in idx:
                    root = np.sqrt(max(T[j, i], 0.0))
                    if root >= q:
                        frac = (q - prev_root) / (root - prev_root) if root > prev_root else 1.0
                        end = prev_val + frac * (vals[j, i] - prev_val)
                        later = idx[np.abs(steps[idx]) > abs(steps[i])]
                        if np.any(np.sqrt(np.maximum(T[j, later], 0)) < q):
                            out["pieces"][name] = True
                        break
                    prev_val, prev_root = vals[j, i], root
                if exact:
                    end = th[j] + side * q * (curv["se"][j] if np.isfinite(se[j]) else 0.0)
                if end is None and T_open is not None:
                    out["open"].setdefault(name, []).append("low" if side < 0 else "high")
                if end is None:
                    end = -np.inf if side < 0 else np.inf
                ends.append(end)
            lo, hi = (_KINDS[kind][0](np.array(e)) for e in ends)
            iv = (float(lo), float(hi))
            if label == "ref":
                out["ref"][name] = iv
                if not moved or np.isclose(fm._anchored(theta, *scale)[j], theta[j]):
                    out["user"][name] = iv
            else:
                out["user"][name] = iv
    return out


def _other_optima(fm: Form, thetas, f, best, curv, norm) -> list:
    """Distinct polished optima whose objective is within the 95% profile level of the best
    (t^2 ~ 4 residual variances): [(values at the reference, statistic)]."""
    out = []
    if not np.isfinite(curv["s2"]) or curv["s2"] <= 1e-14:
        return out
    for i in range(len(f)):
        if i == best or not np.isfinite(f[i]):
            continue
        T = 2 * norm * (f[i] - f[best]) / curv["s2"]
        far = np.max(np.abs(thetas[i] - thetas[best])) > 0.1  # internal, log-scale units
        if T < 4.0 and far:
            out.append((fm._values(thetas[i]), float(T)))
    return out


_DECAYING = ("alpha", "beta")  # exponents a loss law needs positive
_CONDITION_MAX = 1e8  # scaled Gauss-Newton condition number beyond which a fit is flagged


def _weak_identification(f: Fit, fm: Form, xs, ds, start) -> list[str]:
    """What the data identify only weakly, as readable sentences (``Fit.warnings``). For the
    built-in forms, coefficients are judged at the reference size (the geometric mean of x and
    of d), where the fit is parametrised: not at x = 1, decades from the data."""
    out = []
    P = len(fm.param_names)
    dg = f.diagnostics
    dof = len(_point_ids(xs, ds if fm.needs_d else None)[1]) - P
    if dof <= 2:
        out.append(
            f"only {dof} distinct point(s) beyond the {P} parameters: the law nearly "
            "interpolates and its intervals are unreliable"
        )
    cond = dg["condition"]
    if not cond < _CONDITION_MAX:
        out.append(
            f"near-singular curvature (scaled condition number {cond:.3g}): the data cannot "
            "tell some parameters apart"
        )
    # a parameter the prediction does not depend on at the optimum never moves from its start
    for i, name in enumerate(fm.param_names):
        if dg["sensitivity"][i] < 1e-8 * max(1.0, float(np.max(dg["sensitivity"]))):
            out.append(
                f"{name} does not change the prediction at the optimum (it never moved from "
                f"its start, {start[i]:.3g} internal): the data do not constrain it"
            )
    for name, sides in dg["profile_open"].items():
        which = " and ".join(sides)
        out.append(
            f"the {f.level:.0%} profile interval of {name} is open ({which} side): it runs to "
            "the parameter's bound"
        )
    nb = max(f.n_converged, 1)
    for name, k in dg.get("resamples_at_bound", {}).items():
        if k > 0.05 * nb:
            out.append(
                f"{name} is at its bound in {k} of {nb} resamples ({k / nb:.0%}): the data do "
                "not identify it, and the intervals use the resamples with every parameter inside"
            )
    for name in dg["profile_pieces"]:
        out.append(f"the profile of {name} has several basins: its interval may be disjoint")
    if dg["profile_better"]:
        out.append("a profile fit found a lower objective than the fit: it may not be global")
    for vals, T in dg["other_optima"]:
        desc = ", ".join(f"{k} {v:.3g}" for k, v in zip(fm.param_names, vals))
        out.append(
            f"another optimum fits nearly as well ({desc} at the reference; statistic {T:.2g})"
        )
    if fm.log_pred is None:  # a user's form: nothing more known about its parameters
        return out
    for i, (name, kind) in enumerate(zip(fm.param_names, fm.kinds)):
        v = f.params_ref[name]
        lo, hi = f.intervals_ref[name]
        if kind in ("decay", "slope"):
            edge = abs(f._theta[i]) > 8  # within 0.03% of an end of its range
            if edge:
                rng_ = (
                    f"(0, {DECAY_MAX:g})" if kind == "decay" else f"(-{SLOPE_MAX:g}, {SLOPE_MAX:g})"
                )
                out.append(f"{name} = {v:.3g} is at an end of its range {rng_}")
            elif np.isfinite(lo) and np.isfinite(hi) and hi - lo > max(abs(v), 0.1):
                out.append(f"{name} is poorly constrained: interval [{lo:.3g}, {hi:.3g}]")
            continue
        if kind == "free":
            continue
        # a coefficient, as its value at the reference size: compare with the data's scale
        scaled = not np.isclose(f.params[name], v, rtol=1e-9, atol=0)  # A, B, k (not E, c)
        where = " at the reference size" if scaled else ""
        if f._theta[i] < dg["mean_log_y"] + np.log(1e-4):  # < 0.01% of the data
            out.append(f"{name} is at its bound 0: the data do not identify it")
        elif lo > 0 and hi / lo > 10:
            out.append(
                f"{name}{where} spans a factor {hi / lo:.3g} over its interval: poorly constrained"
            )
        elif lo <= 0 and name not in dg["profile_open"]:
            out.append(f"{name}'s interval reaches 0: the data do not bound it from below")
    return out


# --------------------------------------------------------------------------- groups, tables, checks


def fit_groups(df, by=PRECISION, form="saturating", x=N, y=LOSS, **kw) -> dict:
    """One ``fit`` per value of column ``by`` -> ``{group_value: Fit}`` (sorted by group)."""
    if by not in df.columns:
        raise AnalysisError(
            f"column {by!r} (by) not in the table; it has: {', '.join(map(str, df.columns))}"
        )
    return {key: fit(part, form=form, x=x, y=y, **kw) for key, part in df.groupby(by, sort=True)}


def fit_table(fits) -> pd.DataFrame:
    """Tidy table, one row per (group, param): group, form, param, estimate, lo, hi (the
    caller's units: coefficients at x = d = 1), estimate_ref, lo_ref, hi_ref (coefficients at
    the reference size x_ref, d_ref: where the data pin them), interval_method, n_points,
    n_bootstrap, n_converged, r2_log, rmse_log, n_warnings. Takes a dict from ``fit_groups`` or
    one Fit."""
    if isinstance(fits, Fit):
        fits = {None: fits}
    cols = [
        "group",
        "form",
        "param",
        "estimate",
        "lo",
        "hi",
        "estimate_ref",
        "lo_ref",
        "hi_ref",
        "x_ref",
        "d_ref",
        "interval_method",
        "n_points",
        "n_bootstrap",
        "n_converged",
        "r2_log",
        "rmse_log",
        "n_warnings",
    ]
    rows = [
        dict(
            group=key,
            form=f.form,
            param=p,
            estimate=f.params[p],
            lo=f.intervals[p][0],
            hi=f.intervals[p][1],
            estimate_ref=f.params_ref[p],
            lo_ref=f.intervals_ref[p][0],
            hi_ref=f.intervals_ref[p][1],
            x_ref=f.reference.get("x", np.nan),
            d_ref=f.reference.get("d", np.nan),
            interval_method=f.interval_method,
            n_points=f.n_points,
            n_bootstrap=f.n_bootstrap,
            n_converged=f.n_converged,
            r2_log=f.r2_log,
            rmse_log=f.rmse_log,
            n_warnings=len(f.warnings),
        )
        for key, f in fits.items()
        for p in f.param_names
    ]
    return pd.DataFrame(rows, columns=cols)


def extrapolation_check(
    df=None, form="saturating", x=N, y=LOSS, k=2, by=None, d=TOKENS, **kw
) -> pd.DataFrame:
    """Leave-largest-out: fit without the rows of the ``k`` largest distinct ``x`` (per group
    with ``by``), predict them. One row per held-out point: [group,] x, [d,] y, y_pred, y_lo,
    y_hi, rel_error = (y_pred - y) / y, n_fit_points."""
    if by is not None:
        if by not in df.columns:
            raise AnalysisError(
                f"column {by!r} (by) not in the table; it has: {', '.join(map(str, df.columns))}"
            )
        parts = [
            extrapolation_check(p, form, x, y, k, None, d, **kw).assign(group=key)
            for key, p in df.groupby(by, sort=True)
        ]
        out = pd.concat(parts, ignore_index=True)
        return out[["group"] + [c for c in out.columns if c != "group"]]
    fm = _get_form(form)
    xs, ys, ds = _inputs(df, fm, x, y, d)
    if kw.get("cluster") is not None:  # labels per row, so the kept rows can be picked
        kw = kw | {"cluster": _cluster_ids(df, kw["cluster"], len(xs))}
    sizes = np.unique(xs)
    if not 1 <= k < len(sizes):
        raise AnalysisError(
            f"k={k} must be at least 1 and below the number of distinct sizes ({len(sizes)})"
        )
    held = xs >= sizes[-k]
    if kw.get("cluster") is not None:
        kw = kw | {"cluster": kw["cluster"][~held]}
    kw = {"interval": "none"} | kw  # only the prediction (and its bootstrap band) is used
    f = fit(None, fm, xs[~held], ys[~held], ds[~held] if fm.needs_d else None, **kw)
    p = f.predict(xs[held], ds[held] if fm.needs_d else None)
    out = pd.DataFrame(
        {"x": xs[held]}
        | ({"d": ds[held]} if fm.needs_d else {})
        | {
            "y": ys[held],
            "y_pred": p["y"].to_numpy(),
            "y_lo": p["y_lo"].to_numpy(),
            "y_hi": p["y_hi"].to_numpy(),
        }
    )
    out["rel_error"] = (out["y_pred"] - out["y"]) / out["y"]
    out["n_fit_points"] = int((~held).sum())
    return out


def select_form(df=None, forms=("saturating", "power"), x=N, y=LOSS, d=TOKENS, *, k=2, **kw):
    """Fit each of ``forms`` to one table and rank them (model selection).

    Returns one row per form, best first: ``form``, ``n_params`` (P), ``n_points``, ``rss_log``
    (sum of squared log residuals), ``aicc`` (``n ln(RSS / n) + 2P + 2P(P+1) / (n - P - 1)``:
    Gaussian errors on log y, small-sample corrected; inf when n <= P + 1), ``delta_aicc`` (from
    the best), ``extrap_error`` (the worst |prediction / actual - 1| over the ``k`` largest
    sizes, fitted without them: ``extrapolation_check``; NaN when there are too few sizes),
    ``n_warnings`` (``Fit.warnings``) and ``error`` (why a form could not be fitted, else "").
    Ranked by AICc; a form that cannot be fitted ranks last. ``kw`` go to ``fit``. AICc says
    which form the data support, the extrapolation error which one predicts larger models:
    when they disagree, prefer neither blindly."""
    rows = []
    for form in forms:
        name = form.name if isinstance(form, Form) else form
        try:
            f = fit(df, form, x, y, d, **({"interval": "none", "n_bootstrap": 0} | kw))
        except AnalysisError as e:
            rows.append(dict(form=name, error=str(e)))
            continue
        n, P = f.n_points, len(f.param_names)
        rss = float(np.sum(f.residuals_log**2))
        aicc = (
            n * np.log(max(rss, 1e-300) / n) + 2 * P + 2 * P * (P + 1) / (n - P - 1)
            if n > P + 1
            else np.inf
        )
        try:
            ex = extrapolation_check(df, form, x, y, k=k, d=d, **(kw | {"n_bootstrap": 0}))
            err = float(np.max(np.abs(ex["rel_error"])))
        except AnalysisError:
            err = np.nan
        rows.append(
            dict(
                form=name,
                n_params=P,
                n_points=n,
                rss_log=rss,
                aicc=float(aicc),
                extrap_error=err,
                n_warnings=len(f.warnings),
                error="",
            )
        )
    out = pd.DataFrame(rows)
    for c in ("n_params", "n_points", "rss_log", "aicc", "extrap_error", "n_warnings"):
        if c not in out:
            out[c] = np.nan
    out["aicc"] = out["aicc"].fillna(np.inf)
    out = out.sort_values("aicc", kind="stable").reset_index(drop=True)
    out["delta_aicc"] = out["aicc"] - out["aicc"].iloc[0]
    cols = ["form", "n_params", "n_points", "rss_log", "aicc", "delta_aicc", "extrap_error"]
    return out[cols + ["n_warnings", "error"]]


def cache_resident(
    df, bytes_cols=("weight_bytes", "kv_cache_bytes"), cache="roofline_cache_bytes"
) -> pd.Series | None:
    """Per row, whether the bytes one decode step reads (the sum of ``bytes_cols``) fit in the
    measured cache (column ``cache``, bytes): there latency is set by per-call overhead and
    cache bandwidth, not by DRAM, and a law fitted through those rows does not extrapolate.
    None when the table lacks a column or every cache size is NaN (not measured)."""
    cols = list(bytes_cols) + [cache]
    if df is None or any(c not in df.columns for c in cols) or df[cache].isna().all():
        return None
    moved = sum(pd.to_numeric(df[c], errors="coerce") for c in bytes_cols)
    return (moved <= pd.to_numeric(df[cache], errors="coerce")).fillna(False)


def _doc_se(D: np.ndarray, w: np.ndarray, mean: float) -> float:
    """Document-clustered SE of a mean of n = sum(w) window values from per-document sums ``D``
    and window counts ``w``: ``sqrt(G / (G - 1) * sum_g (D_g - w_g mean)^2) / n``."""
    G = len(D)
    if G < 2:
        return float("nan")
    return float(np.sqrt(G / (G - 1) * np.sum((D - w * mean) ** 2)) / np.sum(w))


def paired_differences(df, documents, *, by=None, x=N, point="point_id") -> pd.DataFrame:
    """Held-out loss differences between adjacent sizes, paired on the windows both scored.

    ``df``: results rows (``point`` ids, size ``x``, and the ``by`` columns); ``documents``: their
    held-out loss per document (``jscale.load_document_losses``: point_id, document, windows,
    loss_sum_nats). Every model of a sweep scores the same held-out windows, so the difference
    of two models' losses has a standard error over those windows, clustered by document, far
    below the two models' own SEs combined: their shared document difficulty cancels.

    ``by``: the groups within which sizes are compared; default: inference precision, the
    compute budget (when the table has one, i.e. an IsoFLOP design) or else the token budget,
    and the seed, those the table has. Pairs whose windows differ are skipped.

    One row per adjacent pair: the ``by`` columns, ``x_small``, ``x_large``, ``delta_nats``
    (loss of the larger minus the smaller, nats/token), ``se_paired_nats`` (document-clustered
    SE of the paired difference), ``se_small_nats``, ``se_large_nats`` (each model's own
    document-clustered SE), ``se_unpaired_nats`` (their root sum of squares: the SE if the
    two had been scored on independent windows), ``se_ratio`` (unpaired / paired) and ``z``
    (delta / paired SE), ``n_documents``."""
    if documents is None or not len(documents):
        raise AnalysisError("no per-document losses: paired differences need document_losses")
    _need(documents, ["point_id", "document", "windows", "loss_sum_nats"], "documents")
    if by is None:
        budget = COMPUTE if COMPUTE in df and df[COMPUTE].notna().any() else TOKENS_TARGET
        by = [c for c in (PRECISION, budget, SEED) if c in df.columns]
    by = [by] if isinstance(by, str) else list(by)
    _need(df, [point, x] + by, "paired differences")
    sums = {
        pid: g.set_index("document").sort_index()
        for pid, g in documents.groupby("point_id", sort=False)
    }
    rows = []
    for key, g in df.dropna(subset=[x]).groupby(by, sort=True) if by else [((), df)]:
        g = g[g[point].isin(sums.keys())].sort_values(x)
        g = g.drop_duplicates(subset=[x])
        ids, xs = g[point].to_list(), g[x].to_numpy(float)
        for i in range(len(ids) - 1):
            a, b = sums[ids[i]], sums[ids[i + 1]]
            if not a.index.equals(b.index) or not (a["windows"] == b["windows"]).all():
                continue
            w = a["windows"].to_numpy(float)
            n = w.sum()
            Sa, Sb = a["loss_sum_nats"].to_numpy(float), b["loss_sum_nats"].to_numpy(float)
            delta = float((Sb - Sa).sum() / n)
            se_p = _doc_se(Sb - Sa, w, delta)
            se_a, se_b = _doc_se(Sa, w, Sa.sum() / n), _doc_se(Sb, w, Sb.sum() / n)
            se_u = float(np.hypot(se_a, se_b))
            keys = key if isinstance(key, tuple) else (key,)
            rows.append(
                dict(zip(by, keys))
                | dict(
                    x_small=xs[i],
                    x_large=xs[i + 1],
                    delta_nats=delta,
                    se_paired_nats=se_p,
                    se_small_nats=se_a,
                    se_large_nats=se_b,
                    se_unpaired_nats=se_u,
                    se_ratio=se_u / se_p if se_p > 0 else np.nan,
                    z=delta / se_p if se_p > 0 else np.nan,
                    n_documents=len(w),
                )
            )
    cols = by + [
        "x_small",
        "x_large",
        "delta_nats",
        "se_paired_nats",
        "se_small_nats",
        "se_large_nats",
        "se_unpaired_nats",
        "se_ratio",
        "z",
        "n_documents",
    ]
    return pd.DataFrame(rows, columns=cols)


def compute_optimal(fit: Fit, C, flops_per_param_token=6.0) -> dict:
    """Compute-optimal ``N`` and ``D`` for budget ``C`` (FLOPs; scalar or array) under a
    chinchilla fit with ``C = flops_per_param_token * N * D``: minimising
    ``E + A N^-alpha + B D^-beta`` gives ``N = G (C/k)^(beta/(alpha+beta))``,
    ``G = (alpha A / (beta B))^(1/(alpha+beta))``, ``D = C / (k N)``. Also ``N_lo, N_hi, D_lo,
    D_hi``: percentile intervals over the converged bootstrap resamples."""
    if not isinstance(fit, Fit) or fit.form not in ND_FORMS or fit._form is not FORMS[fit.form]:
        raise AnalysisError(
            "compute_optimal needs a fit of the 'chinchilla' form (or chinchilla_no_floor)"
        )
    Cs = np.asarray(C, float)
    if np.any(~np.isfinite(Cs) | (Cs <= 0)) or not flops_per_param_token > 0:
        raise AnalysisError("C and flops_per_param_token must be finite and positive")

    ix = {k: i for i, k in enumerate(fit.param_names)}

    def nd(p):
        A, a, B, b = (p[..., ix[k], None] for k in ("A", "alpha", "B", "beta"))
        N = (a * A / (b * B)) ** (1 / (a + b)) * (Cs.ravel() / flops_per_param_token) ** (
            b / (a + b)
        )
        return N, Cs.ravel() / (flops_per_param_token * N)

    N, D = nd(np.array([fit.params[k] for k in fit.param_names]))
    out = {"N": N.reshape(Cs.shape), "D": D.reshape(Cs.shape)}
    if np.ndim(C) == 0:
        out = {k: float(v) for k, v in out.items()}
    if len(fit.bootstrap_params):
        q = 50 * (1 - fit.level)
        for name, arr in zip("ND", nd(fit.bootstrap_params)):
            lo, hi = np.percentile(arr, [q, 100 - q], axis=0)
            out[name + "_lo"], out[name + "_hi"] = (lo.reshape(Cs.shape), hi.reshape(Cs.shape))
            if np.ndim(C) == 0:
                out[name + "_lo"], out[name + "_hi"] = float(lo[0]), float(hi[0])
    return out


# --------------------------------------------------------------------------- learning rate


def _need(df, cols, role: str) -> None:
    for c in cols:
        if c not in df.columns:
            raise AnalysisError(
                f"column {c!r} ({role}) not in the table; it has: {', '.join(map(str, df.columns))}"
            )


def _by_columns(df, by) -> list:
    if by is None:  # the defaults that the table has; N is required
        _need(df, [N], "by")
        return [c for c in (N, TOKENS_TARGET, "train_precision") if c in df.columns]
    by = [by] if isinstance(by, str) else list(by)
    _need(df, by, "by")
    return by


def lr_choices(
    df, *, score=SELECT, by=None, lr=LR, seed=SEED, choose_on=(PRECISION, "fp32")
) -> pd.DataFrame:
    """The learning rate chosen per group: the one with the lowest mean ``score`` over seeds.

    ``by``: the group columns; default ``(N, TOKENS_TARGET, "train_precision")``, those of them
    the table has. Only rows whose column ``choose_on[0]`` equals ``choose_on[1]`` (default: the
    fp32-inference rows) are scored, when the table has that column and the group has such rows;
    per (group, lr, seed) the score is averaged first (it is the same in every precision row of
    one model), then over seeds, so every seed counts once. Ties go to the smaller lr.

    One row per group: the ``by`` columns, ``lr`` (the winner), ``score`` (its mean, in the
    score's units, nats/token for ``select_loss_nats``), ``n_seeds`` (seeds behind it),
    ``n_lr`` (lrs tried), ``lr_grid`` (tuple of the lrs tried), ``edge`` ("low" or "high" when
    the winner is the smallest or largest lr tried and more than one was: the optimum may lie
    outside the grid; "" otherwise)."""
    by = _by_columns(df, by)
    _need(df, [lr, score], "lr selection")
    d = df
    if choose_on is not None and choose_on[0] in df.columns:
        on = df[choose_on[0]].astype(str) == str(choose_on[1])
        has = on.groupby([df[c] for c in by]).transform("any")
        d = df[on | ~has]  # groups without a choose_on row are scored on all their rows
    if d[lr].isna().any():
        raise AnalysisError(f"column {lr!r} (lr) has {int(d[lr].isna().sum())} NaN")
    if d[score].isna().any():
        raise AnalysisError(
            f"column {score!r} (score) has {int(d[score].isna().sum())} NaN; every model needs a "
            "selection-split loss to choose its learning rate"
        )
    keys = by + [lr] + ([seed] if seed in d.columns else [])
    per_seed = d.groupby(keys, sort=True)[score].mean().reset_index()
    per_lr = (
        per_seed.groupby(by + [lr], sort=True)[score].agg(["mean", "count"]).reset_index()
    )  # sorted by lr within each group: argmin takes the smallest lr on a tie
    rows = []
    for key, g in per_lr.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        i = int(np.argmin(g["mean"].to_numpy()))
        grid = tuple(float(v) for v in g[lr])
        win = grid[i]
        edge = "" if len(grid) < 2 else "low" if i == 0 else "high" if i == len(grid) - 1 else ""
        rows.append(
            dict(zip(by, key))
            | dict(
                lr=win,
                score=float(g["mean"].iloc[i]),
                n_seeds=int(g["count"].iloc[i]),
                n_lr=len(grid),
                lr_grid=grid,
                edge=edge,
            )
        )
    return pd.DataFrame(rows, columns=by + ["lr", "score", "n_seeds", "n_lr", "lr_grid", "edge"])


def select_lr(df, *, score=SELECT, by=None, lr=LR, seed=SEED, choose_on=(PRECISION, "fp32")):
    """All rows (every precision, every seed) at the learning rate chosen per group by
    ``lr_choices`` (lowest mean ``score`` over seeds on the selection split; the test loss is
    never read). A table without column ``lr``, or with one lr per group, is returned unchanged
    (the same object). Which lr won, and whether it sits at the edge of the grid: ``lr_choices``.
    """
    if lr not in df.columns:
        return df
    by = _by_columns(df, by)
    if df.groupby(by)[lr].nunique().max() <= 1:
        return df
    ch = lr_choices(df, score=score, by=by, lr=lr, seed=seed, choose_on=choose_on)
    keep = df.merge(
        ch[by + ["lr"]].rename(columns={"lr": lr}), on=by + [lr], how="left", indicator=True
    )
    return df[keep["_merge"].to_numpy() == "both"]


# --------------------------------------------------------------------------- IsoFLOP (approach 2)


def _parabolas(t, Y):
    """Least-squares parabolas ``Y[b] = c0 + c1 t + c2 t^2`` (float64) over ``t`` ``[n]`` for
    each row of ``Y`` ``[B, n]`` -> (coefficients ``[B, 3]``, the design ``X`` ``[n, 3]``)."""
    X = np.stack([np.ones_like(t), t, t * t], 1)
    return np.linalg.lstsq(X, np.atleast_2d(Y).T, rcond=None)[0].T, X


def _line(x, Y):
    """Least-squares lines ``Y[b] = i + s x`` over ``x`` ``[m]`` for each row of ``Y``
    ``[B, m]`` -> (slopes ``[B]``, intercepts ``[B]``)."""
    xc = x - x.mean()
    s = (Y - Y.mean(1, keepdims=True)) @ xc / (xc @ xc)
    return s, Y.mean(1) - s * x.mean()


@dataclasses.dataclass(eq=False)
class IsoFLOP:
    """Hoffmann et al.'s approach 2: per compute budget C (FLOPs), a parabola of loss in
    ``ln N``, its minimum N_opt(C) (parameters) and D_opt = C / (k N_opt) (tokens, ``k`` =
    ``flops_per_param_token``); then the frontier N_opt = k_n C^a, D_opt = k_d C^b by log-log
    least squares over the budgets whose minimum is interior.

    ``budgets``: one row per budget, sorted by C: ``C``, ``n_sizes``, ``n_points``, ``N_min``,
    ``N_max`` (sampled sizes), ``c0, c1, c2`` (loss = c0 + c1 t + c2 t^2, t = ln N - ``t0``),
    ``t0``, ``convex`` (c2 > 0), ``interior`` (convex and N_opt within [N_min, N_max]),
    ``reason`` (why not interior; "" when it is), ``N_opt``, ``N_lo``, ``N_hi``, ``D_opt``,
    ``D_lo``, ``D_hi``, ``L_opt`` (loss at the minimum, in y's units), ``n_boot_valid``
    (resamples whose parabola for this budget was convex with its minimum inside the sampled
    sizes: the interval is over those; under half of them flags the budget).

    ``a, a_interval, b, b_interval, k_n, k_d``: the frontier, NaN when ``frontier_ok`` is False
    (fewer than 2 interior budgets; ``frontier_note`` says why). Intervals are bootstrap
    percentiles at ``level`` over the ``n_valid`` resamples in which every interior budget's
    parabola stayed convex; ``bootstrap_frontier`` ``[n_valid, 2]`` holds their (a, ln k_n).
    ``bootstrap_unit`` says what was resampled."""

    budgets: pd.DataFrame
    a: float
    a_interval: tuple
    b: float
    b_interval: tuple
    k_n: float
    k_d: float
    frontier_ok: bool
    frontier_note: str
    n_interior: int
    level: float
    n_bootstrap: int
    n_valid: int
    bootstrap_unit: str
    flops_per_param_token: float
    bootstrap_frontier: np.ndarray

    def parabola(self, C, x_new) -> np.ndarray:
        """The fitted parabola of budget ``C`` at sizes ``x_new`` (``[m]`` -> loss ``[m]``)."""
        row = self.budgets[np.isclose(self.budgets["C"], C, rtol=1e-9)]
        if not len(row):
            raise AnalysisError(f"no budget C={C:g}; budgets: {list(self.budgets['C'])}")
        r = row.iloc[0]
        t = np.log(np.asarray(x_new, float)) - r["t0"]
        return r["c0"] + r["c1"] * t + r["c2"] * t * t

    def optimal(self, C) -> pd.DataFrame:
        """The frontier at budgets ``C`` (FLOPs, ``[m]``): columns C, N_opt, N_lo, N_hi, D_opt,
        D_lo, D_hi (bootstrap percentiles). Raises ``AnalysisError`` when the frontier was
        refused (fewer than 2 interior budgets)."""
        if not self.frontier_ok:
            raise AnalysisError(f"no IsoFLOP frontier: {self.frontier_note}")
        Cs = np.atleast_1d(np.asarray(C, float))
        out = pd.DataFrame({"C": Cs, "N_opt": self.k_n * Cs**self.a})
        out["D_opt"] = Cs / (self.flops_per_param_token * out["N_opt"])
        if len(self.bootstrap_frontier):
            a, lk = self.bootstrap_frontier[:, :1], self.bootstrap_frontier[:, 1:]
            Nb = np.exp(lk + a * np.log(Cs)[None])
            q = 50 * (1 - self.level)
            out["N_lo"], out["N_hi"] = np.percentile(Nb, [q, 100 - q], axis=0)
            out["D_lo"] = Cs / (self.flops_per_param_token * out["N_hi"])
            out["D_hi"] = Cs / (self.flops_per_param_token * out["N_lo"])
        else:
            for c in ("N_lo", "N_hi", "D_lo", "D_hi"):
                out[c] = np.nan
        return out[["C", "N_opt", "N_lo", "N_hi", "D_opt", "D_lo", "D_hi"]]


def isoflop(
    df,
    *,
    budget=COMPUTE,
    x=N,
    y=LOSS,
    n_bootstrap=1000,
    cluster=None,
    seed=0,
    level=0.95,
    min_sizes=3,
    flops_per_param_token=6.0,
) -> IsoFLOP:
    """IsoFLOP profiles (Hoffmann et al. 2022, approach 2) from the rows of ``df`` with a
    compute budget (column ``budget``, FLOPs; rows where it is NaN are ignored).

    Per budget: least squares (float64) of ``y`` (loss) on ``t, t^2``, t = ln ``x`` (N) minus
    the budget's mean; the minimum N_opt = exp(t0 - c1 / (2 c2)), D_opt = C /
    (``flops_per_param_token`` N_opt). A budget whose parabola is not convex, or whose minimum
    lies outside its sampled sizes, is flagged (``interior`` False, ``reason``) and left out of
    the frontier. Each budget needs ``min_sizes`` (>= 3) distinct sizes, else ``AnalysisError``.

    Bootstrap (``n_bootstrap`` resamples): a wild bootstrap of the parabolas' residuals with the
    design fixed (resampling rows would drop the sizes on one side of a minimum and make it
    unidentified in that resample): each resample adds to every fitted value its residual
    (scaled by sqrt(n / (n - 3))) times a random sign, one sign per cluster, so the rows of one
    ``cluster`` (a column or list of columns, e.g. ``[N, SEED]``: one model's branches, in
    every budget) move together; ``cluster=None`` draws a sign per row. Each resample refits
    every parabola and, over the interior budgets, the frontier. A budget whose minimum fewer
    than half of the resamples place inside the sampled sizes is flagged weakly identified
    (``interior`` False) and left out of the frontier.

    The table must hold one inference precision (filter it first): several precision rows of
    one model are not independent points."""
    if not isinstance(min_sizes, int) or min_sizes < 3:
        raise AnalysisError("min_sizes must be an integer >= 3 (a parabola has 3 coefficients)")
    if not 0 < level < 1 or n_bootstrap < 0:
        raise AnalysisError("need 0 < level < 1 and n_bootstrap >= 0")
    _need(df, [budget, x, y], "isoflop")
    if PRECISION in df.columns and df[PRECISION].nunique() > 1:
        raise AnalysisError(
            f"isoflop needs one inference precision; column {PRECISION!r} has "
            f"{', '.join(sorted(map(str, df[PRECISION].unique())))}: filter it first"
        )
    Craw = pd.to_numeric(df[budget], errors="coerce").to_numpy(float)
    has = np.isfinite(Craw)
    if not has.any():
        raise AnalysisError(f"column {budget!r} (budget) has no finite compute budget")
    d = df[has]
    Cs = Craw[has]
    xs, ys = _column(d, x, "x"), _column(d, y, "y")
    if np.any(xs <= 0) or np.any(Cs <= 0):
        raise AnalysisError("x and the compute budgets must be positive")
    budgets = np.unique(Cs)
    few = [(c, len(np.unique(xs[Cs == c]))) for c in budgets]
    few = [(c, k) for c, k in few if k < min_sizes]
    if few:
        raise AnalysisError(
            f"isoflop needs at least {min_sizes} distinct sizes ({x!r}) per compute budget; "
            + ", ".join(f"C={c:.3g} has {k}" for c, k in few)
        )
    gid = _cluster_ids(d, cluster, len(xs))
    if gid is None:
        gid = np.arange(len(xs))  # every row its own cluster
    rng = np.random.default_rng(seed)
    B = int(n_bootstrap)
    signs = rng.choice([-1.0, 1.0], size=(B, int(gid.max()) + 1))  # Rademacher, one per cluster
    q = 50 * (1 - level)
    rows, boot_t = [], {}
    for c in budgets:
        m = Cs == c
        lx, yy = np.log(xs[m]), ys[m]
        t0 = float(lx.mean())
        t = lx - t0
        coef, X = _parabolas(t, yy)
        coef = coef[0]
        c0, c1, c2 = coef
        convex = bool(c2 > 0)
        ts = -c1 / (2 * c2) if c2 != 0 else np.nan
        if not convex:
            reason = "parabola not convex (no minimum)"
        elif ts < t.min():
            reason = "minimum below the smallest sampled size"
        elif ts > t.max():
            reason = "minimum above the largest sampled size"
        else:
            reason = ""
        Nopt = float(np.exp(t0 + ts)) if convex else np.nan
        row = dict(
            C=float(c),
            n_sizes=len(np.unique(xs[m])),
            n_points=int(m.sum()),
            N_min=float(xs[m].min()),
            N_max=float(xs[m].max()),
            c0=c0,
            c1=c1,
            c2=c2,
            t0=t0,
            convex=convex,
            interior=reason == "",
            reason=reason,
            N_opt=Nopt,
            D_opt=float(c / (flops_per_param_token * Nopt)) if convex else np.nan,
            L_opt=float(c0 - c1 * c1 / (4 * c2)) if convex else np.nan,
            N_lo=np.nan,
            N_hi=np.nan,
            n_boot_valid=0,
        )
        if B:
            # wild bootstrap of the residuals, the design fixed: every resample keeps every size,
            # and the rows of one cluster (a model's branches) flip their residual together
            resid = yy - X @ coef
            resid = resid * np.sqrt(len(yy) / max(len(yy) - 3, 1))  # undo the fit's shrinkage
            Ystar = (X @ coef)[None] + signs[:, gid[m]] * resid[None]
            bc = _parabolas(t, Ystar)[0]  # [B, 3]
            tb = np.where(
                bc[:, 2] > 0, -bc[:, 1] / (2 * np.where(bc[:, 2] > 0, bc[:, 2], 1)), np.nan
            )
            tb = np.where((tb >= t.min()) & (tb <= t.max()), tb, np.nan)
            boot_t[float(c)] = t0 + tb
            ok = np.isfinite(tb)
            row["n_boot_valid"] = int(ok.sum())
            if ok.any():
                row["N_lo"], row["N_hi"] = np.exp(np.percentile(t0 + tb[ok], [q, 100 - q]))
            if reason == "" and ok.mean() < 0.5:
                reason = (
                    f"minimum weakly identified: {ok.mean():.0%} of resamples place it inside "
                    "the sampled sizes"
                )
                row.update(interior=False, reason=reason)
        rows.append(row)
    tab = pd.DataFrame(rows)
    tab["D_lo"] = tab["C"] / (flops_per_param_token * tab["N_hi"])
    tab["D_hi"] = tab["C"] / (flops_per_param_token * tab["N_lo"])
    cols = ["C", "n_sizes", "n_points", "N_min", "N_max", "interior", "reason", "N_opt", "N_lo"]
    cols += ["N_hi", "D_opt", "D_lo", "D_hi", "L_opt", "convex", "c0", "c1", "c2", "t0"]
    tab = tab[cols + ["n_boot_valid"]]
    inter = tab[tab["interior"]]
    nan2 = (np.nan, np.nan)
    out = IsoFLOP(
        budgets=tab,
        a=np.nan,
        a_interval=nan2,
        b=np.nan,
        b_interval=nan2,
        k_n=np.nan,
        k_d=np.nan,
        frontier_ok=False,
        frontier_note="",
        n_interior=len(inter),
        level=level,
        n_bootstrap=B,
        n_valid=0,
        bootstrap_unit="wild residual signs per "
        + (
            _cluster_name(d, cluster).replace("clusters of", "model")
            if cluster is not None
            else "row"
        )
        + ", design fixed",
        flops_per_param_token=float(flops_per_param_token),
        bootstrap_frontier=np.zeros((0, 2)),
    )
    if len(inter) < 2:
        out.frontier_note = (
            f"{len(inter)} of {len(tab)} budgets have an interior minimum; the frontier needs 2"
        )
        return out
    lc = np.log(inter["C"].to_numpy(float))
    s, i = _line(lc, np.log(inter["N_opt"].to_numpy(float))[None])
    out.a, out.k_n = float(s[0]), float(np.exp(i[0]))
    out.b = 1.0 - out.a  # ln D_opt = ln C - ln k - ln N_opt, exactly
    out.k_d = 1.0 / (flops_per_param_token * out.k_n)
    out.frontier_ok = True
    if B:
        T = np.stack([boot_t[float(c)] for c in inter["C"]], 1)  # [B, m], ln N_opt per resample
        ok = np.isfinite(T).all(1)
        sb, ib = _line(lc, T[ok])
        out.bootstrap_frontier = np.stack([sb, ib], 1)
        out.n_valid = int(ok.sum())
        if ok.any():
            lo, hi = np.percentile(sb, [q, 100 - q])
            out.a_interval, out.b_interval = (float(lo), float(hi)), (1 - float(hi), 1 - float(lo))
    return out


# --------------------------------------------------------------------------- approach 3


def chinchilla_frontier(fit: Fit, C=(), flops_per_param_token=6.0) -> dict:
    """Hoffmann et al.'s approach 3 from a ``chinchilla`` fit: the compute-optimal exponents
    a = beta / (alpha + beta) (N_opt ~ C^a) and b = alpha / (alpha + beta) (D_opt ~ C^b), each
    with a percentile interval over the fit's converged bootstrap resamples (``a_lo``, ``a_hi``,
    ``b_lo``, ``b_hi``; NaN without resamples), and ``optimal``: a DataFrame of N_opt, D_opt
    with intervals at budgets ``C`` (FLOPs; columns C, N_opt, N_lo, N_hi, D_opt, D_lo, D_hi),
    from ``compute_optimal``. The intervals carry the fit's bootstrap unit
    (``fit.bootstrap_unit``)."""
    if not isinstance(fit, Fit) or fit.form not in ND_FORMS or fit._form is not FORMS[fit.form]:
        raise AnalysisError(
            "chinchilla_frontier needs a fit of the 'chinchilla' form (or chinchilla_no_floor)"
        )
    al, be = fit.params["alpha"], fit.params["beta"]
    out = {"a": be / (al + be), "b": al / (al + be)}
    bp = fit.bootstrap_params
    q = 50 * (1 - fit.level)
    if len(bp):
        ia, ib = fit.param_names.index("alpha"), fit.param_names.index("beta")
        ab = bp[:, ib] / (bp[:, ia] + bp[:, ib])
        out["a_lo"], out["a_hi"] = (float(v) for v in np.percentile(ab, [q, 100 - q]))
        out["b_lo"], out["b_hi"] = 1 - out["a_hi"], 1 - out["a_lo"]
    else:
        out["a_lo"] = out["a_hi"] = out["b_lo"] = out["b_hi"] = np.nan
    Cs = np.atleast_1d(np.asarray(C, float))
    opt = pd.DataFrame({"C": Cs})
    if len(Cs):
        co = compute_optimal(fit, Cs, flops_per_param_token)
        for k in ("N", "N_lo", "N_hi", "D", "D_lo", "D_hi"):
            opt[k + ("_opt" if k in ("N", "D") else "")] = co.get(k, np.full(len(Cs), np.nan))
    out["optimal"] = opt.reindex(columns=["C", "N_opt", "N_lo", "N_hi", "D_opt", "D_lo", "D_hi"])
    return out


def compare_approaches(iso: IsoFLOP, fit: Fit, flops_per_param_token=None) -> pd.DataFrame:
    """Approaches 2 (``iso``, IsoFLOP parabolas) and 3 (``fit``, a ``chinchilla`` fit) side by
    side. Rows: ``a`` (N_opt ~ C^a), ``b`` (D_opt ~ C^b), then ``N_opt`` at each IsoFLOP budget
    C (parameters). Columns: quantity, C (FLOPs; NaN for the exponents), approach2,
    approach2_lo, approach2_hi, approach3, approach3_lo, approach3_hi, ratio (approach3 /
    approach2), agree (1.0 when the two intervals overlap, 0.0 when they are disjoint: the
    approaches disagree beyond their noise; NaN without both intervals), interior (whether
    approach 2's minimum at that budget is interior; its N_opt is reported either way, but only
    interior budgets enter its exponents). D_opt follows from
    N_opt as C / (6 N_opt), so the D ratio is the inverse of the N ratio."""
    k = iso.flops_per_param_token if flops_per_param_token is None else flops_per_param_token
    ch = chinchilla_frontier(fit, iso.budgets["C"].to_numpy(float), k)
    rows = [
        dict(
            quantity=name,
            C=np.nan,
            approach2=v2,
            approach2_lo=iv[0],
            approach2_hi=iv[1],
            approach3=ch[name],
            approach3_lo=ch[name + "_lo"],
            approach3_hi=ch[name + "_hi"],
            interior=iso.frontier_ok,
        )
        for name, v2, iv in (("a", iso.a, iso.a_interval), ("b", iso.b, iso.b_interval))
    ]
    for r2, r3 in zip(iso.budgets.itertuples(), ch["optimal"].itertuples()):
        rows.append(
            dict(
                quantity="N_opt",
                C=r2.C,
                approach2=r2.N_opt,
                approach2_lo=r2.N_lo,
                approach2_hi=r2.N_hi,
                approach3=r3.N_opt,
                approach3_lo=r3.N_lo,
                approach3_hi=r3.N_hi,
                interior=bool(r2.interior),
            )
        )
    out = pd.DataFrame(rows)
    out["ratio"] = out["approach3"] / out["approach2"]
    ivs = out[["approach2_lo", "approach2_hi", "approach3_lo", "approach3_hi"]].to_numpy(float)
    overlap = (ivs[:, 0] <= ivs[:, 3]) & (ivs[:, 2] <= ivs[:, 1])
    out["agree"] = np.where(np.isfinite(ivs).all(1), overlap, np.nan)
    return out[
        [
            "quantity",
            "C",
            "approach2",
            "approach2_lo",
            "approach2_hi",
            "approach3",
            "approach3_lo",
            "approach3_hi",
            "ratio",
            "agree",
            "interior",
        ]
    ]
