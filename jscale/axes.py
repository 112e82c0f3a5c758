"""The axes of a sweep, read off any results table: the learning rate chosen per size and
budget on the selection split (``lr_choices``, ``select_lr``), Hoffmann et al.'s approach 2
(``isoflop``: a parabola in ln N per compute budget, then N_opt ~ C^a), and paired loss
differences between adjacent sizes (``paired_differences``). Re-exported by
``jscale.analysis``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from jscale.laws import AnalysisError, _cluster_ids, _cluster_name, _column
from jscale.schema import COMPUTE, LOSS, LR, PRECISION, SEED, SELECT, TOKENS_TARGET, N


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
