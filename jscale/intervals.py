"""Interval machinery of ``jscale.analysis.fit``: the Gauss-Newton curvature, profile
likelihood (plain, or rescaled by a cluster-robust variance), the wild (cluster) bootstrap-t with
bias-reduced (CR2) residuals, and the flags they raise. Every function works in the internal
coordinates of ``jscale.laws``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jscale.laws import _KINDS, Form, _jacobian, _jacobians


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
        i = np.flatnonzero((cid == g) & (w > 0))  # rows of weight 0 keep their residual
        if not len(i):
            continue
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
    th_all = np.vstack([theta[None], boot])
    J = _jacobians(fm, th_all, u, v)  # [1 + B, n, P]
    # log yhat at each theta, to first order exactly: the solver's residuals are not kept
    with jax.enable_x64(True):
        pred = np.asarray(
            jax.vmap(fm._log_pred, in_axes=(0, None, None))(
                jnp.asarray(th_all, jnp.float64),
                jnp.asarray(u, jnp.float64),
                jnp.asarray(v, jnp.float64),
            )
        )
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


@functools.lru_cache(maxsize=256)  # every fit asks for it; 6,000 betainc evaluations each time
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
    )


# multiples of t * se at which each parameter is profiled, each side (the crossing of the
# t^2 level is interpolated in the signed root of the profile statistic, nearly linear there)
_PROFILE_STEPS = np.array([0.6, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 40.0])


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
        # at x = d = 1 only the re-anchored coefficients differ from the reference's profiles
        js = [j for j in range(P) if label == "ref" or th[j] != theta[j]]
        # the batch keeps P x K rows either way (one compiled shape); unused rows repeat row 0
        starts = np.repeat(th[None, None, :], P * K, 0).repeat(2, 1)  # [P*K, 2, P]
        mask = np.ones((P * K, P))
        for i, j in enumerate(js):
            rows = slice(i * K, (i + 1) * K)
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
            used = len(js) * K
            starts[used:], mask[used:] = starts[0], mask[0]
            r = run(starts, np.broadcast_to(w, (P * K, len(w))), mask=mask, uv=(uu, vv))
            T = np.full((P, K), np.inf)
            f = np.where(np.isfinite(r["f"]), r["f"], np.inf).min(1)[:used].reshape(len(js), K)
            T[js] = 2 * norm * (f - f_best) / s2
            T = T * np.where(np.isfinite(ratio) & (ratio > 0), ratio, 1.0)[:, None]
        if np.any(T < -1e-6 * max(1.0, curv["dof"])):
            out["better"] = True
        if label == "user":
            T_open = None  # open sides are judged at the reference (said once per parameter)
        else:
            T_open = T
        for j, name in enumerate(names):
            if j not in js or (label == "user" and name in out["user"]):
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
