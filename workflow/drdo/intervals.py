"""95% confidence intervals for win-rates: one run, and a study's worlds x seeds x prompts.

Every function is vectorised over leading axes, so a test can check the coverage of the very
code that writes ``winrates.csv`` and ``study.csv`` on thousands of simulated studies at once.
Per-prompt outcomes are in [0, 1]: 1 / 0.5 / 0 for win / tie / loss.

- ``score_interval``: one run, prompts drawn at random, each a win, tie or loss (a trinomial).
  The win-rate is (1 + d) / 2 with d = P(win) - P(loss), the difference of two proportions of
  one sample; the interval is Tango's (1998) score interval for d, with a continuity
  correction: every d with (|wins - losses - n d| - 1)^2 <= z^2 n (2 q(d) + d (1 - d)), where
  q(d) is the maximum-likelihood P(loss) given d (a quadratic's root). Its variance is that of
  the model fitted at each candidate d, not of the observed outcomes, so a run that is mostly
  ties is not taken as certain: 3 ties of 3 give [0.10, 0.90]. Without ties it is the
  continuity-corrected Wilson interval. Exact trinomial coverage (tests/test_intervals.py), over
  a grid of win and tie probabilities at n = 3 to 100 prompts, is at least 95% at every grid
  point; without ties (exact binomial sums at n = 50, 100, 200) it is at least 95% for every
  win probability p with 1 <= n p <= n - 1 and 94.9% at worst, in a narrow window at p of about
  0.052 / n (and 1 - 0.052 / n). Plain Wilson falls to 84%, the percentile bootstrap to 63% at
  p = 0.99 with 100 prompts (where it reports [1, 1]), and a Wilson interval on the observed
  outcomes' variance to 39-83% when most outcomes are ties.
- ``world_interval``: a study with W >= 2 worlds. Each world has its own data, SFT model,
  Oracle and eval prompts; its training seeds share its prompts. World means are independent
  draws with the prompt and seed variance inside them, so the interval is built on them: the
  hull of (a) the t interval with W - 1 degrees of freedom and (b) the generalised confidence
  interval (Weerahandi 1993; as Krishnamoorthy & Mathew 2003 do for a log-normal mean) of the
  mean of a logit-normal model of the worlds' decisive-win shares. (a) is exact when world
  means are normal; with few worlds and a mean near 0 or 1 they are skewed (the 5-world study's
  world means are), and (b), which models that skew, keeps the coverage. The estimand is the
  mean over the population of worlds, training seeds and prompts.
- ``crossed_interval``: one world, S >= 2 seeds x P prompts shared by every seed: the mean over
  that world's seeds and prompts. Seeds and prompts are crossed random effects, so the
  variance of the grand mean is s_seed^2 / S + s_prompt^2 / P + s_resid^2 / (S P), estimated
  by (MS_seed + MS_prompt - MS_resid) / (S P) (two-way ANOVA; a component estimated below 0
  set to 0), with Satterthwaite's degrees of freedom; widened to at least the score interval
  of all S P outcomes (what independent outcomes would give).
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(64)


def _t_pdf(x: np.ndarray, df: np.ndarray) -> np.ndarray:
    logc = np.vectorize(math.lgamma)((df + 1) / 2) - np.vectorize(math.lgamma)(df / 2) - 0.5 * np.log(df * math.pi)
    return np.exp(logc - (df + 1) / 2 * np.log1p(x * x / df))


def _t_cdf_minus_half(x: np.ndarray, df: np.ndarray) -> np.ndarray:
    """P(0 < T < x) for x >= 0 by Gauss-Legendre quadrature on [0, x] (the density is smooth)."""
    u = 0.5 * x[..., None] * (_NODES + 1)
    return 0.5 * x * (_WEIGHTS * _t_pdf(u, df[..., None])).sum(-1)


def t_quantile(prob: float, df) -> np.ndarray:
    """Quantile ``prob`` (> 0.5) of Student's t with ``df`` >= 1 degrees of freedom (any real
    df, e.g. Satterthwaite's), by Newton's method on the quadrature CDF; inf where df is NaN."""
    df = np.asarray(df, dtype=float)
    ok = np.isfinite(df) & (df > 0)
    d = np.where(ok, np.maximum(df, 1.0), 1.0)
    x = np.full(d.shape, NormalDist().inv_cdf(prob))
    for _ in range(60):
        step = (_t_cdf_minus_half(x, d) - (prob - 0.5)) / _t_pdf(x, d)
        x = np.maximum(x - step, x / 2)  # from z upwards; never overshoot below 0
        if np.all(np.abs(step) < 1e-12 * x):
            break
    return np.where(ok, x, np.inf)


@lru_cache(maxsize=None)
def _t_two_sided(df: int) -> float:
    """The two-sided ``LEVEL`` quantile of t with integer ``df`` (the study asks for few)."""
    return float(t_quantile(0.5 + LEVEL / 2, df))


def score_interval(outcomes: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Score interval of the win-rate of per-prompt outcomes 1 / 0.5 / 0 along ``axis`` (NaN: left out)."""
    o = np.moveaxis(np.asarray(outcomes, dtype=float), axis, -1)
    if not np.isin(o[~np.isnan(o)], (0.0, 0.5, 1.0)).all():
        raise ValueError("score_interval: outcomes must be 1 (win), 0.5 (tie), 0 (loss) or NaN")
    wins, losses, n = (o == 1).sum(-1).astype(float), (o == 0).sum(-1).astype(float), (~np.isnan(o)).sum(-1)
    n = np.where(n > 0, n, 1).astype(float)  # n = 0 gives NaN below
    d_hat = (wins - losses) / n

    def inside(d):
        # q: the maximum-likelihood P(loss) at P(win) - P(loss) = d, root of 2n q^2 + w q - losses d (1 - d)
        w = -wins - losses + (2 * n - wins + losses) * d
        q = (-w + np.sqrt(np.maximum(w * w + 8 * n * losses * d * (1 - d), 0.0))) / (4 * n)
        var = n * (2 * np.maximum(q, np.maximum(-d, 0.0)) + d * (1 - d))
        return np.maximum(np.abs(wins - losses - n * d) - 1.0, 0.0) ** 2 <= Z * Z * np.maximum(var, 0.0) + 1e-12

    def end(limit: float):
        """The interval's end towards ``limit`` (-1 or 1): the set of d inside is an interval
        around d_hat, so bisect between d_hat (inside) and ``limit``."""
        far = np.full(d_hat.shape, limit)
        near, out = d_hat.copy(), far.copy()
        for _ in range(50):  # 2^-50 of the range: far below the printed digits
            mid = (near + out) / 2
            ok = inside(mid)
            near, out = np.where(ok, mid, near), np.where(ok, out, mid)
        return np.where(inside(far), far, near)

    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = (1 + end(-1.0)) / 2, (1 + end(1.0)) / 2
    empty = (~np.isnan(o)).sum(-1) == 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def cluster_t_interval(cluster_means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """t interval (W - 1 degrees of freedom) of the mean of the W cluster means on the last axis."""
    m = np.asarray(cluster_means, dtype=float)
    w = m.shape[-1]
    if w < 2:
        raise ValueError("a t interval over clusters needs at least 2 clusters (worlds)")
    centre = m.mean(axis=-1)
    half = _t_two_sided(w - 1) * m.std(axis=-1, ddof=1) / math.sqrt(w)
    return centre - half, centre + half


_HERMITE_X, _HERMITE_W = np.polynomial.hermite_e.hermegauss(32)
_HERMITE_W = _HERMITE_W / _HERMITE_W.sum()  # E[f(Z)], Z ~ N(0, 1)


def logit_normal_gci(outcomes: np.ndarray, n_draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generalised confidence interval of the mean over worlds, ``outcomes[..., W, n]`` (NaN: none).

    Per world: the share of decisive outcomes (0 or 1) b_w, the mean contribution of the others
    (ties) a_w, and the decisive-win share d_w = (wins + 1/2) / (decisive + 1). logit d_w is
    modelled as normal across worlds (mean m, sd sigma), so the estimand is
    mean(a) + mean(b) E[expit(m + sigma Z)]. Pivots: sigma~ = s sqrt((W - 1) / chi2_{W-1}),
    m~ = m_hat - Z' sigma~ / sqrt(W); the interval is the 2.5% and 97.5% quantiles of the
    estimand at (m~, sigma~) over ``n_draws`` draws from ``seed`` (the same draws for every
    row with the same W: a row's interval does not depend on the others).
    """
    o = np.asarray(outcomes, dtype=float)
    w = o.shape[-2]
    if w < 2:
        raise ValueError("a generalised interval over worlds needs at least 2 worlds")
    valid = ~np.isnan(o)
    n = valid.sum(-1)
    decisive = (o == 0) | (o == 1)
    wins, n_dec = (o == 1).sum(-1), decisive.sum(-1)
    a = np.where(valid & ~decisive, o, 0.0).sum(-1) / n
    b = n_dec / n
    d = (wins + 0.5) / (n_dec + 1.0)
    logit = np.log(d / (1 - d))
    m, s = logit.mean(-1), logit.std(-1, ddof=1)
    rng = np.random.default_rng(seed)
    chi2, z = rng.chisquare(w - 1, n_draws), rng.standard_normal(n_draws)
    sigma = s[..., None] * np.sqrt((w - 1) / chi2)  # [..., K]
    centre = m[..., None] - z * sigma / math.sqrt(w)
    e = np.zeros_like(sigma)
    with np.errstate(over="ignore"):
        for x, weight in zip(_HERMITE_X, _HERMITE_W):  # node by node: memory [..., K], not [..., K, 32]
            e += weight / (1 + np.exp(-(centre + sigma * x)))
    r = a.mean(-1)[..., None] + b.mean(-1)[..., None] * e
    return np.quantile(r, 0.5 - LEVEL / 2, axis=-1), np.quantile(r, 0.5 + LEVEL / 2, axis=-1)


def world_interval(outcomes: np.ndarray, n_draws: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) over ``outcomes[..., W, S, P]`` (W >= 2 worlds, S seeds, P prompts; NaN:
    no outcome): the mean over worlds of each world's mean over its seeds of their means over
    prompts, and the hull of the t interval on the world means and ``logit_normal_gci``."""
    o = np.asarray(outcomes, dtype=float)
    with np.errstate(invalid="ignore"):
        world_means = np.nanmean(np.nanmean(o, axis=-1), axis=-1)
    lo_t, hi_t = cluster_t_interval(world_means)
    lo_g, hi_g = logit_normal_gci(o.reshape(*o.shape[:-2], -1), n_draws, seed)
    # a mean of outcomes in [0, 1] lies in [0, 1]: clipping the t interval there costs no coverage
    return world_means.mean(-1), np.clip(np.minimum(lo_t, lo_g), 0, 1), np.clip(np.maximum(hi_t, hi_g), 0, 1)


def crossed_interval(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) of outcomes ``y[..., S, P]`` (1 / 0.5 / 0): one world, S >= 2 seeds x
    P >= 2 shared prompts; ``crossed_t_interval`` widened to at least the score interval of all
    S P outcomes."""
    y = np.asarray(y, dtype=float)
    grand, lo, hi = crossed_t_interval(y)
    lo_s, hi_s = score_interval(y.reshape(*y.shape[:-2], -1))
    return grand, np.minimum(lo, lo_s), np.maximum(hi, hi_s)


def crossed_t_interval(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) of ``y[..., S, P]`` in [0, 1]: the two-way ANOVA t interval (module docstring)."""
    y = np.asarray(y, dtype=float)
    s, p = y.shape[-2:]
    if s < 2 or p < 2:
        raise ValueError("a crossed seeds x prompts interval needs at least 2 seeds and 2 prompts")
    grand = y.mean(axis=(-2, -1))
    seed_m, prompt_m = y.mean(axis=-1), y.mean(axis=-2)
    ms_seed = p * ((seed_m - grand[..., None]) ** 2).sum(-1) / (s - 1)
    ms_prompt = s * ((prompt_m - grand[..., None]) ** 2).sum(-1) / (p - 1)
    resid = y - seed_m[..., None] - prompt_m[..., None, :] + grand[..., None, None]
    df_r = (s - 1) * (p - 1)
    ms_resid = (resid ** 2).sum((-2, -1)) / df_r
    # a variance component estimated below 0 is set to 0, which leaves the larger of MS_seed
    # and MS_prompt (with its own degrees of freedom) alone
    full = ms_seed + ms_prompt - ms_resid
    single = np.maximum(ms_seed, ms_prompt)
    use_full = full > single
    with np.errstate(invalid="ignore", divide="ignore"):  # Satterthwaite
        df_full = full ** 2 / (ms_seed ** 2 / (s - 1) + ms_prompt ** 2 / (p - 1) + ms_resid ** 2 / df_r)
    df = np.where(use_full, df_full, np.where(ms_seed >= ms_prompt, s - 1.0, p - 1.0))
    var = np.where(use_full, full, single) / (s * p)
    half = np.where(var > 0, t_quantile(0.5 + LEVEL / 2, df) * np.sqrt(var), 0.0)
    return grand, np.clip(grand - half, 0, 1), np.clip(grand + half, 0, 1)
