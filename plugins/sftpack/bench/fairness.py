"""Fairness check of a suite's comparison pairs, before anything runs.

    python -m sftpack.bench.fairness benchmarks/suites/cpu_tiny.yaml     # prints each pair's verdict

For each `group` (one llamafactory and one swift run) the merged configs (shipped YAML + the suite's
overrides) are normalised with sftpack.parity (each framework's defaults filled in) and compared on
parity.KEYS (LoRA rank/alpha/dropout/targets, lr and schedule, batch and accumulation, max length and
truncation, dtype, packing, seed, dataset, system prompt, ...), plus the effective batch (per-device batch x
accumulation x GPUs) and the chat template. Speed options (attention kernel, Liger, gradient checkpointing)
are deliberately not compared: a "fast" pair turns on what each framework offers; they are recorded per run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from sftpack import parity
from sftpack.bench.suite import RunSpec, Suite
from sftpack.frameworks import adapter

# (LF template, Swift template) pairs that render the same token ids for the shipped configs; checked by
# rendering in tests/test_config_parity.py. Any other pair of names counts as a difference.
EQUIVALENT_TEMPLATES = {("qwen", "qwen2_5")}


@dataclass
class PairVerdict:
    group: str
    llamafactory: str
    swift: str
    differences: dict[str, list] = field(default_factory=dict)   # key -> [llamafactory value, swift value]

    @property
    def comparable(self) -> bool:
        return not self.differences

    def describe(self) -> str:
        if self.comparable:
            return f"{self.group}: {self.llamafactory} vs {self.swift}: comparable"
        diffs = "; ".join(f"{k}: {v[0]!r} vs {v[1]!r}" for k, v in self.differences.items())
        return f"{self.group}: {self.llamafactory} vs {self.swift}: NOT comparable ({diffs})"

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "llamafactory": self.llamafactory, "swift": self.swift,
                "comparable": self.comparable, "differences": self.differences}


def merged_config(suite: Suite, run: RunSpec) -> dict[str, Any]:
    """The run's config as the framework sees it, minus the keys the harness sets (model, output_dir)."""
    from sftpack.training import merged_config as merge

    return merge(run.config_path, suite.overrides(run))


def normalised(suite: Suite, run: RunSpec) -> dict[str, Any]:
    cfg = merged_config(suite, run)
    values = adapter(run.framework).normalise(cfg)
    batch, accumulation = values["per_device_train_batch_size"], values["gradient_accumulation_steps"]
    world = max(suite.gpus(run), 1)
    values["effective_batch"] = batch * accumulation * world if accumulation is not None else None
    values["template"] = cfg.get("template")
    return values


def check_pair(suite: Suite, group: str) -> PairVerdict:
    members = {run.framework: run for run in suite.groups()[group]}
    lf_run, swift_run = members["llamafactory"], members["swift"]
    lf, swift = normalised(suite, lf_run), normalised(suite, swift_run)
    diffs = {key: list(pair) for key, pair in parity.differences(lf, swift, parity.KEYS + ("effective_batch",)).items()}
    if lf["template"] != swift["template"] and (lf["template"], swift["template"]) not in EQUIVALENT_TEMPLATES:
        diffs["template"] = [lf["template"], swift["template"]]
    if suite.gpus(lf_run) != suite.gpus(swift_run):
        diffs["gpus"] = [suite.gpus(lf_run), suite.gpus(swift_run)]
    return PairVerdict(group, lf_run.name, swift_run.name, diffs)


def check_suite(suite: Suite) -> list[PairVerdict]:
    return [check_pair(suite, group) for group in suite.groups()]


def speed_options(suite: Suite, run: RunSpec) -> dict[str, Any]:
    """The speed/memory switches of a run in one vocabulary (recorded, not compared)."""
    return adapter(run.framework).speed_options(merged_config(suite, run))


def main(argv: list[str] | None = None) -> int:
    from sftpack.bench.suite import load_suite

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    verdicts = check_suite(load_suite(args[0]))
    for verdict in verdicts:
        print(verdict.describe())
    return 0 if all(v.comparable for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
