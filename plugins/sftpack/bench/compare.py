"""When two measured trainings can be compared on time: one rule for every report (bench pairs, pipelines).

    from sftpack.bench.compare import not_comparable
    reasons = not_comparable(lf_result, swift_result, cores=2)   # [] when the conditions match

Time figures carry the machine's load: two runs measured while other work loaded the CPU differently cannot be
set side by side as if they were measured alike (seen: LLaMA-Factory at load 3.65 vs Swift at 2.83 on 2 cores).
A pair is marked not comparable on time when either run's 1-minute load average (before or after it) exceeded
the number of cores, or the two runs' loads differ by more than half the cores; on throughput when their token
counts count different things (non-padding vs padded). CPU seconds and tokens per CPU-second are printed beside
wall time because they move less with load (they still move: torch's threads spin while they wait for a core).
"""

from __future__ import annotations

from typing import Any


def _load(result: dict[str, Any]) -> float | None:
    values = [result.get(k) for k in ("load_avg_1m_before", "load_avg_1m_after") if result.get(k) is not None]
    return max(values) if values else None


def not_comparable(a: dict[str, Any], b: dict[str, Any], cores: int | None) -> list[str]:
    """Why results `a` and `b` (result.json dicts, sftpack.training) cannot be compared on time; [] if they can."""
    reasons = []
    load_a, load_b = _load(a), _load(b)
    if cores and load_a is not None and load_b is not None:
        if max(load_a, load_b) > cores:
            reasons.append(f"the machine was oversubscribed (1-min load {load_a:.2f} vs {load_b:.2f} on {cores} "
                           "cores): wall times are inflated by an unknown share")
        elif abs(load_a - load_b) > cores / 2:
            reasons.append(f"the machine's load differed (1-min load {load_a:.2f} vs {load_b:.2f} on {cores} cores)")
    counted = {(a.get("throughput") or {}).get("tokens_counted"), (b.get("throughput") or {}).get("tokens_counted")}
    if len(counted - {None}) > 1:
        reasons.append(f"tokens/s count different things ({' vs '.join(sorted(c for c in counted if c))}): compare "
                       "non-padding tokens/s")
    return reasons
