"""Intervals over questions and paired tests between two models on the same questions (sweeps and `sftpack eval`).

    from sftpack import stats
    stats.interval([1, 0, 1, 1])            # Interval(mean=0.75, low=0.30, high=0.95, method='wilson', n=4)
    stats.paired([1, 0, 1, 1], [1, 1, 1, 1])  # Paired(difference=0.25, p_value=1.0, test='mcnemar_exact', ...)
    stats.question_scores(records)          # lm-eval samples records -> {"exact_match,strict-match": {doc_id: 1.0}}
    stats.question_intervals(records)       # -> {"exact_match,strict-match": Interval}: what `sftpack eval` shows

Everything is computed by scipy (a pinned dependency of the frameworks: constraints.txt), not re-implemented here:

| what | when | scipy |
| --- | --- | --- |
| Wilson score interval of a proportion | every value is 0 or 1 (exact match, format rate) | `binomtest(k, n).proportion_ci(method="wilson")` |
| bootstrap interval of a mean | any other per-question values (e.g. averaged over seeds) | `bootstrap(..., method="percentile")` |
| exact McNemar test (two-sided) | two models' 0/1 results on the same questions | `binomtest(b, b + c, 0.5)` on the discordant pairs |
| paired permutation test (sign flips) | two models' other paired values | `permutation_test(..., permutation_type="samples")` |
| interval of the paired difference | both cases | `bootstrap(..., paired=True, method="percentile")` |
| Spearman rank correlation | e.g. the learning-rate orderings of LoRA and full | `spearmanr` |

Resampling uses a fixed seed, so the same values give the same interval. p-values are not corrected for multiple
comparisons; reports say so. scipy and numpy are imported inside the functions (importing sftpack stays light).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95
ALPHA = 0.05            # a paired difference with p >= ALPHA is "not significant"
RESAMPLES = 9999
SEED = 0


@dataclass(frozen=True)
class Interval:
    """The mean of per-question values with its confidence interval. None: unknown (no values)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    method: str                       # "wilson" | "bootstrap_percentile" | "none"
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, digits: int = 3, percent: bool = False) -> str:
        """'0.750 [0.301, 0.954]' (or '75.0 % [30.1, 95.4]')."""
        if self.mean is None:
            return "—"
        scale, unit = (100.0, " %") if percent else (1.0, "")
        fmt = f"{{:.{max(digits - 2, 0) if percent else digits}f}}"
        bounds = "" if self.low is None else f" [{fmt.format(self.low * scale)}, {fmt.format(self.high * scale)}]"
        return f"{fmt.format(self.mean * scale)}{unit}{bounds}"


@dataclass(frozen=True)
class Paired:
    """B minus A on the same questions: the mean difference, its interval, and the paired test's p-value."""

    n: int
    mean_a: float | None
    mean_b: float | None
    difference: float | None          # mean(b) - mean(a)
    low: float | None                 # interval of the difference (paired bootstrap, percentile)
    high: float | None
    p_value: float | None             # two-sided
    test: str                         # "mcnemar_exact" | "paired_permutation" | "none"
    b_better: int | None = None       # McNemar's discordant counts: questions only b gets right ...
    a_better: int | None = None       # ... and only a gets right
    confidence: float = CONFIDENCE

    def significant(self, alpha: float = ALPHA) -> bool | None:
        return None if self.p_value is None else self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant()}


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1) for v in values)


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of `successes` out of `n` (no continuity correction)."""
    if n <= 0:
        return Interval(None, None, None, 0, "none", confidence)
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / n, _finite(ci.low), _finite(ci.high), int(n), "wilson", confidence)


def bootstrap_mean(values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                   seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of the mean of `values` (questions resampled with replacement)."""
    values = [float(v) for v in values]
    if not values:
        return Interval(None, None, None, 0, "none", confidence)
    mean = sum(values) / len(values)
    if len(values) < 2 or min(values) == max(values):
        return Interval(mean, mean, mean, len(values), "bootstrap_percentile", confidence)
    import numpy as np
    from scipy.stats import bootstrap

    result = bootstrap((np.asarray(values),), np.mean, confidence_level=confidence, n_resamples=resamples,
                       method="percentile", rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(mean, _finite(ci.low), _finite(ci.high), len(values), "bootstrap_percentile", confidence)


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The interval of the mean of per-question `values`: Wilson when each is 0 or 1, else a bootstrap."""
    values = [float(v) for v in values]
    if values and _binary(values):
        return wilson(int(sum(values)), len(values), confidence)
    return bootstrap_mean(values, confidence)


def _difference_interval(a: Sequence[float], b: Sequence[float], confidence: float) -> tuple[float | None, ...]:
    import numpy as np
    from scipy.stats import bootstrap

    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(diffs) < 2 or diffs.min() == diffs.max():
        return float(diffs.mean()), float(diffs.mean())
    result = bootstrap((np.asarray(a, dtype=float), np.asarray(b, dtype=float)),
                       lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True, vectorized=True,
                       confidence_level=confidence, n_resamples=RESAMPLES, method="percentile",
                       rng=np.random.default_rng(SEED))
    return _finite(result.confidence_interval.low), _finite(result.confidence_interval.high)


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Paired:
    """Compare b with a on the same questions (same order): exact McNemar when both are 0/1, else a paired
    permutation test; the difference's interval by a paired bootstrap."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b):
        raise ValueError(f"paired values need the same questions: {len(a)} vs {len(b)} values")
    n = len(a)
    if n == 0:
        return Paired(0, None, None, None, None, None, None, "none", confidence=confidence)
    mean_a, mean_b = sum(a) / n, sum(b) / n
    low, high = _difference_interval(a, b, confidence)
    if _binary(a) and _binary(b):
        from scipy.stats import binomtest

        b_better = sum(1 for x, y in zip(a, b) if y > x)
        a_better = sum(1 for x, y in zip(a, b) if x > y)
        p = binomtest(b_better, b_better + a_better, 0.5).pvalue if b_better + a_better else 1.0
        return Paired(n, mean_a, mean_b, mean_b - mean_a, low, high, _finite(p), "mcnemar_exact", b_better,
                      a_better, confidence)
    import numpy as np
    from scipy.stats import permutation_test

    diffs = np.asarray(b) - np.asarray(a)
    if not diffs.any():
        p = 1.0
    else:
        p = permutation_test((np.asarray(a), np.asarray(b)), lambda x, y, axis=-1: np.mean(y - x, axis=axis),
                             permutation_type="samples", vectorized=True, n_resamples=RESAMPLES,
                             alternative="two-sided", rng=np.random.default_rng(SEED)).pvalue
    return Paired(n, mean_a, mean_b, mean_b - mean_a, low, high, _finite(min(float(p), 1.0)), "paired_permutation",
                  confidence=confidence)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of x and y; None when undefined (fewer than 2 points, or a constant side)."""
    if len(x) != len(y) or len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr

    return _finite(spearmanr(x, y).statistic)


# -- lm-eval per-question results ------------------------------------------------------------------------------
def question_scores(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """lm-eval samples records (one JSON line per document and filter, as in `samples_<task>_<time>.jsonl`) ->
    {"metric,filter" (lm-eval's result key): {doc_id: value}}. Non-numeric metric values are left out."""
    scores: dict[str, dict[int, float]] = {}
    for record in records:
        flt = record.get("filter", "none")
        for metric in record.get("metrics") or []:
            value = record.get(metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            scores.setdefault(f"{metric},{flt}", {})[int(record["doc_id"])] = float(value)
    return scores


def question_intervals(records: Iterable[Mapping[str, Any]], confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """{"metric,filter": Interval over the questions} of one lm-eval samples file's records (what `sftpack eval`
    adds beside lm-eval's stderr: see question_scores)."""
    return {name: interval(list(values.values()), confidence) for name, values in question_scores(records).items()}
