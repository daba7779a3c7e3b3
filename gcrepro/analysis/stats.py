"""Seed statistics for the report: mean ± sample std, and a 95% t interval for a GC gain.

One entry run with n seeds gives n AP values: :func:`mean_std` (sample std, n - 1 in the denominator;
none for n = 1). A GC gain is the GC entry's mean AP minus its group baseline's (:func:`gain`). When
both entries ran the same seeds (n >= 2) the gain is paired by seed: a t interval on the per-seed
differences, df = n - 1 (:func:`paired_ci`); otherwise, with n >= 2 on both sides, Welch's t interval
with the Welch-Satterthwaite df (:func:`welch_ci`). With n < 2 on either side there is no interval, and
:class:`Gain` says why. A gain whose interval contains 0 is not significant. t quantiles come from
``scipy.stats.t.ppf``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


class StatsError(ValueError):
    """Values a statistic cannot be computed from (one line: which statistic, what it needs)."""


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (NaN when n = 1) and n of a set of values."""

    mean: float
    std: float
    n: int


def mean_std(values: Sequence[float]) -> Spread:
    """Mean and sample std (denominator n - 1) of ``values``; std NaN for a single value."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise StatsError("mean_std: no values")
    if not all(math.isfinite(v) for v in values):
        raise StatsError(f"mean_std: expected finite values, got {values}")
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Spread(mean=mean, std=std, n=n)


@dataclass(frozen=True)
class Interval:
    """A confidence interval for a difference of means (a - b)."""

    estimate: float  # the difference of the means
    low: float
    high: float
    df: float  # degrees of freedom of the t quantile (inf when the data have no spread)
    method: str  # "paired" | "welch"
    confidence: float = CONFIDENCE

    @property
    def significant(self) -> bool:
        """False when the interval contains 0."""
        return not (self.low <= 0.0 <= self.high)


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided t quantile: ``t.ppf((1 + confidence) / 2, df)``."""
    from scipy.stats import t

    if not 0.0 < confidence < 1.0:
        raise StatsError(f"confidence {confidence}: expected a number in (0, 1)")
    return float(t.ppf(0.5 + confidence / 2.0, df))


def _interval(estimate: float, se: float, df: float, method: str, confidence: float) -> Interval:
    if se == 0.0:  # no spread at all: the t interval shrinks to the point
        return Interval(estimate, estimate, estimate, math.inf, method, confidence)
    half = t_quantile(df, confidence) * se
    return Interval(estimate, estimate - half, estimate + half, df, method, confidence)


def paired_ci(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The t interval of mean(a - b) over pairs (a[i], b[i]) (the same seed), df = n - 1."""
    if len(a) != len(b):
        raise StatsError(f"paired_ci: {len(a)} and {len(b)} values; expected one pair per seed")
    if len(a) < 2:
        raise StatsError(f"paired_ci: {len(a)} pair(s); an interval needs at least 2")
    diff = mean_std([x - y for x, y in zip(a, b)])
    return _interval(diff.mean, diff.std / math.sqrt(diff.n), diff.n - 1, "paired", confidence)


def welch_ci(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Welch's t interval of mean(a) - mean(b) (unequal variances), Welch-Satterthwaite df."""
    if len(a) < 2 or len(b) < 2:
        raise StatsError(f"welch_ci: n = {len(a)} and {len(b)}; an interval needs at least 2 on each side")
    sa, sb = mean_std(a), mean_std(b)
    va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n  # squared standard errors of the two means
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1)) if se > 0 else math.inf
    return _interval(sa.mean - sb.mean, se, df, "welch", confidence)


@dataclass(frozen=True)
class Gain:
    """A GC gain: GC mean minus baseline mean, its interval (None when it cannot be computed) and why not."""

    mean: float
    interval: Interval | None
    n_gc: int
    n_base: int
    why: str = ""  # why there is no interval ("" when there is one)

    @property
    def significant(self) -> bool | None:
        return None if self.interval is None else self.interval.significant


def gain(gc: Mapping[int, float], base: Mapping[int, float], confidence: float = CONFIDENCE) -> Gain:
    """The gain of ``gc`` over ``base`` (each: seed -> AP). Paired by seed when both have the same seeds, else
    Welch; no interval with n < 2 on either side (``why`` says so, with n per entry)."""
    if not gc or not base:
        raise StatsError(f"gain: n = {len(gc)} (GC) and {len(base)} (baseline); expected at least one run each")
    mean = mean_std(list(gc.values())).mean - mean_std(list(base.values())).mean
    if len(gc) < 2 or len(base) < 2:
        return Gain(mean, None, len(gc), len(base),
                    why=f"no interval: n = {len(gc)} vs {len(base)}")
    if set(gc) == set(base):
        seeds = sorted(gc)
        interval = paired_ci([gc[s] for s in seeds], [base[s] for s in seeds], confidence)
    else:
        interval = welch_ci(list(gc.values()), list(base.values()), confidence)
    return Gain(mean, interval, len(gc), len(base))
