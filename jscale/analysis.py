"""Power-law fits of loss and latency against model size, with intervals that say what the
data identify.

Imports only numpy, pandas, jax and optax (never the model or training code), so it can be
used on any table: your own runs or published data. The laws and the solver live in
``jscale.laws``, the interval machinery in ``jscale.intervals``, the sweep's axes (learning
rate, IsoFLOP, paired differences) in ``jscale.axes``; everything public is re-exported here.

``fit``: least squares on log y by default (``huber_delta`` for the Huber loss of Hoffmann et
al.), every point of the form's start grid (>= 500 for chinchilla) on all rows, the best few
polished; intervals by profile likelihood (default for least squares; rescaled by a
cluster-robust variance with ``cluster``), by a resampling bootstrap (``n_bootstrap``
resamples of rows or clusters, as multinomial count weights: one compiled function serves them
all), or by the wild bootstrap-t. ``Fit.warnings`` says what the data identify only weakly;
``_inputs`` refuses what they cannot identify at all.

``chinchilla_frontier`` is approach 3 (the exponents of a ``chinchilla`` fit);
``compare_approaches`` puts it beside approach 2 (``isoflop``).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pandas as pd

from jscale.axes import (  # noqa: F401  (re-exported)
    IsoFLOP,
    isoflop,
    lr_choices,
    paired_differences,
    select_lr,
)
from jscale.degradation import PrecisionLaw, fit_precision_law  # noqa: F401  (re-exported)
from jscale.intervals import (  # noqa: F401  (_t_quantile re-exported for tests)
    _at_bound,
    _cluster_adjusted,
    _curvature,
    _other_optima,
    _profile,
    _t_quantile,
    _wild_signs,
    _wild_t,
)
from jscale.laws import (  # noqa: F401  (re-exported)
    _JITTER,
    _LOG_PRED,
    _POLISH,
    _PREDICTORS,
    _TRACES,
    DECAY_MAX,
    FORMS,
    ND_FORMS,
    SLOPE_MAX,
    AnalysisError,
    Form,
    _bucket,
    _cluster_ids,
    _cluster_name,
    _column,
    _get_form,
    _inputs,
    _point_ids,
    _solver,
    _spec,
    _stalled_at_optimum,
    _weights,
)
from jscale.schema import LOSS, PRECISION, TOKENS, N

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
        theta_2d = np.atleast_2d(np.asarray(theta, np.float64))
        u = np.atleast_1d(np.asarray(u, np.float64))
        v = np.broadcast_to(np.asarray(v, np.float64), u.shape)
        # padded (``_bucket``: copies of the last theta and point), so predictions at any
        # number of points share a few compiled programs
        k, m = len(theta_2d), len(u)
        if m == 0:
            return np.empty((k, 0))
        th = theta_2d[np.minimum(np.arange(_bucket(k, 1)), k - 1)]
        cols = np.minimum(np.arange(_bucket(m)), m - 1)
        with jax.enable_x64(True):
            return np.asarray(_PREDICTORS[self._form](th, u[cols], v[cols]))[:k, :m]

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


def _check_args(df, form, columns: dict, ints: dict, reals: dict) -> None:
    """``AnalysisError`` naming the first argument of ``fit`` of the wrong kind: ``df`` not a
    DataFrame (or None), ``form`` not a name or ``Form``, a column that is neither a name nor
    numbers, a count that is not an integer (bools and 2.5 are not), a number that is not real."""
    if df is not None and not isinstance(df, pd.DataFrame):
        raise AnalysisError(f"df must be a pandas DataFrame or None, got {type(df).__name__}")
    if not isinstance(form, (str, Form)):
        raise AnalysisError(f"form must be a form name or an analysis.Form, got {form!r}")
    for name, v in columns.items():
        if v is None and name != "d":
            raise AnalysisError(f"{name} is None; give a column name or one number per row")
        if v is not None and not isinstance(v, str):
            try:
                np.asarray(v, dtype=float)
            except (TypeError, ValueError):
                raise AnalysisError(
                    f"{name} must be a column name or numbers, got non-numeric {str(v)[:60]!r}"
                ) from None
    for name, v in ints.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise AnalysisError(f"{name} must be an integer, got {v!r}")
    for name, v in reals.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.number))):
            raise AnalysisError(f"{name} must be a number, got {v!r}")


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
    _check_args(
        df,
        form,
        {"x": x, "y": y, "d": d},
        {"n_bootstrap": n_bootstrap, "bootstrap_starts": bootstrap_starts}
        | {"max_iter": max_iter, "grid_iter": grid_iter},
        {"huber_delta": huber_delta, "level": level, "gtol": gtol, "ftol": ftol},
    )
    fm = _get_form(form)
    xs, ys, ds = _inputs(df, fm, x, y, d)
    gid = _cluster_ids(df, cluster, len(xs))
    rw = np.ones(len(xs)) if weights is None else _column(df, weights, "weights")
    if len(rw) != len(xs) or not np.all(np.isfinite(rw) & (rw >= 0)) or not np.any(rw > 0):
        raise AnalysisError(
            f"weights ({_spec(weights)}) must be {len(xs)} finite values >= 0, one per row, "
            "some > 0"
        )
    pos = rw > 0  # rows of weight 0 are left out of the objective (the shapes stay the same)
    P = len(fm.param_names)
    points = len(_point_ids(xs[pos], ds[pos] if fm.needs_d else None)[1])
    if points < P + 1:
        raise AnalysisError(
            f"form {fm.name!r} has {P} parameters and needs at least {P + 1} distinct points "
            f"of weight > 0, got {points}: the fit would interpolate"
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
    n, n_pos = len(xs), int(pos.sum())
    scale = (
        (float(np.mean(np.log(xs[pos]))), float(np.mean(np.log(ds[pos]))))
        if fm.log_pred
        else (0.0, 0.0)
    )
    u, v = fm._prep(xs, ds, *scale)
    ly = np.log(ys)
    starts = fm._starts(float(np.mean(ly[pos])))
    solve = _solver(fm, int(max_iter), float(gtol), float(ftol))
    gsolve = _solver(fm, int(min(grid_iter, max_iter)), float(gtol), float(ftol))
    delta, norm = (_LSQ_DELTA, _LSQ_NORM) if lsq else (float(huber_delta), float(huber_delta))
    with jax.enable_x64(True):

        def run(th0, w, sol=solve, mask=None, uv=(u, v), ys=None):
            th0 = np.asarray(th0, float)  # numpy throughout: the solver pads and stages it
            B = th0.shape[0]
            mask = np.ones((B, P)) if mask is None else np.asarray(mask, float)
            ys = np.broadcast_to(ly, (B, len(ly))) if ys is None else np.asarray(ys, float)
            wb = np.broadcast_to(np.asarray(w, float), (B, len(ly)))
            out = sol(th0, wb, mask, uv[0], uv[1], ys, delta, norm)
            out["converged"] = out["converged"] | _stalled_at_optimum(
                fm, out, wb, mask, uv[0], uv[1], norm
            )
            return out

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
        lyhat = np.asarray(_LOG_PRED(fm)(theta, np.asarray(u), np.asarray(v)))
        res = ly - lyhat
        curv = _curvature(fm, theta, u, v, rw, res, n_pos - P)
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
                w = np.zeros((n_bootstrap, n))  # resamples of the rows of weight > 0
                gp = None if gid is None else np.unique(gid[pos], return_inverse=True)[1]
                w[:, pos] = _weights(rng, n_pos, n_bootstrap, gp)
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
        r2_log=float(1 - np.sum(res[pos] ** 2) / np.sum((ly[pos] - ly[pos].mean()) ** 2)),
        rmse_log=float(np.sqrt(np.mean(res[pos] ** 2))),
        n_points=n_pos,
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
            mean_log_y=float(np.mean(ly[pos])),
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
    fit_.warnings = _weak_identification(
        fit_, fm, xs[pos], ds[pos] if fm.needs_d else None, starts[top[best]]
    )
    return fit_


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
    bound = _at_bound(fm, f._theta, dg["mean_log_y"])[0]
    for i, (name, kind) in enumerate(zip(fm.param_names, fm.kinds)):
        v = f.params_ref[name]
        lo, hi = f.intervals_ref[name]
        if kind in ("decay", "slope"):
            if bound[i]:  # within 0.03% of an end of its range
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
        if bound[i]:  # below 0.01% of the data's scale
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
    # the held-out rows get weight 0: left out of the fit, but the shapes (and so the compiled
    # solver) are the full table's
    rw = np.ones(len(xs)) if kw.get("weights") is None else _column(df, kw["weights"], "weights")
    kw = {"interval": "none"} | kw | {"weights": np.where(held, 0.0, rw)}
    f = fit(None, fm, xs, ys, ds if fm.needs_d else None, **kw)
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
