"""Benchmark suite schema: small dataclasses read from `benchmarks/suites/*.yaml`, checked by sftpack.spec before
any work (types, ranges, choices, unknown keys, config files, LoRA keys, step counts; every problem at once, each
naming file:line and key; a `--set` value says `--set`).

    from sftpack.bench.suite import load_suite
    suite = load_suite("benchmarks/suites/cpu_tiny.yaml")   # `sftpack bench SUITE --check` prints its plan

A suite names a model, a dataset and a list of runs. Each run is one framework CLI (`llamafactory` or `swift`)
on one shipped config (`train_configs/...`) plus overrides. Overrides are merged in this order: the presets
named in `defaults.presets` (e.g. `tiny_cpu` = `sftpack.frameworks.TINY_CPU_LF` / `TINY_CPU_SWIFT`), then
`defaults.<framework>`, then the run's own `overrides`; the harness then sets the keys it owns (model path,
`output_dir`, token counting, the Swift dataset plugin), so a suite may not set those. Relative paths of the suite
itself (`config`, `model.tokenizer`, `dataset.source`) resolve against the suite file's folder
(`config: ../../train_configs/qwen_gsm8k.yaml`; sftpack.assets.relative: older root-relative paths still resolve).
In override and env string values, `{repo}` is replaced by the assets root (the checkout's root, or the wheel's
copy of the shipped files: sftpack.assets.root()); paths in configs otherwise resolve against the run's working
folder. Runs sharing a `group` are one comparison pair: exactly one
`llamafactory` and one `swift` run, checked for fairness (sftpack.bench.fairness) before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sftpack import frameworks as fw
from sftpack import spec
from sftpack.assets import places_text, relative
from sftpack.spec import At, key

FRAMEWORKS = fw.FRAMEWORKS
FAIRNESS_MODES = ("refuse", "mark")
# Named override sets, one dict per framework; the values live in sftpack.frameworks (one source of truth).
PRESETS: dict[str, dict[str, Mapping[str, Any]]] = {
    "tiny_cpu": {name: adapter.tiny_cpu for name, adapter in fw.ADAPTERS.items()},
}
# Keys the training core sets itself for every run (each adapter's harness_keys).
HARNESS_KEYS = {name: adapter.harness_keys for name, adapter in fw.ADAPTERS.items()}


class SuiteError(spec.SpecError):
    """A suite file is invalid; the message names the file, the line, the key and the fix."""


def _substitute(value: Any) -> Any:
    """`{repo}` in strings (also inside lists) -> the repository root."""
    if isinstance(value, str):
        return value.replace("{repo}", str(fw.REPO_ROOT))
    if isinstance(value, list):
        return [_substitute(item) for item in value]
    return value


def _relative(value: str, at: At | None) -> tuple[Path, list[Path]]:
    """A path written in the suite file at `at`: against the file's folder (sftpack.assets.relative)."""
    return at.relative(value) if at is not None else relative(value, None)


def _shapes() -> list[str]:
    from sftpack.tiny_model import SHAPES

    return sorted(SHAPES)


def _families() -> list[str]:
    from sftpack.converters import CONVERTERS

    return sorted(CONVERTERS)


NAME_PATTERN = r"[A-Za-z0-9_.-]+"   # a run's name names its result folder
Scalar = str | int | float | bool    # an environment variable's value (written as a string)


@dataclass
class ModelSpec:
    """The model every run trains. `path` when it exists offline, else built with sftpack.tiny_model."""

    path: str | None = None          # a local folder or a hub id looked up in this machine's HF/ModelScope cache
    build_shape: str | None = key(None, choices=_shapes)   # sftpack.tiny_model.SHAPES key; random weights, offline
    seed: int = key(0, ge=0)
    tokenizer: str | None = None     # tokenizer folder for the built model (default: the tiny GSM8K-trained one)
    _at: At | None = field(default=None, repr=False, compare=False)

    def check(self, at: At) -> None:
        if self.path is None and self.build_shape is None:
            at.error("nothing to train", expected=f"'path' (a local folder or hub id), 'build_shape' (one of "
                                                  f"{_shapes()}), or both (build_shape is used when path is "
                                                  "unavailable)")

    @property
    def bases(self) -> tuple[Path, ...]:
        """Folders a relative `path` is looked up in first: the suite file's (then the assets root, the cwd)."""
        return (self._at.doc.folder,) if self._at is not None and self._at.doc.folder else ()

    def tokenizer_path(self) -> Path | None:
        """The tokenizer folder, resolved against the repo root; None = the tiny model's own tokenizer."""
        if self.tokenizer is None:
            return None
        return _relative(_substitute(self.tokenizer), self._at)[0]

    def check_tokenizer(self) -> None:
        """The tokenizer folder must exist before a model is built with it (checked before any run, not at load:
        a fresh clone has no GPU-kit tokenizer yet)."""
        path = self.tokenizer_path()
        if path is not None and not (path / "tokenizer_config.json").is_file():
            at = (self._at or spec.nowhere("model"))["tokenizer"]
            at.fail(SuiteError, "no tokenizer folder (no tokenizer_config.json)", self.tokenizer,
                    "a tokenizer folder; the GPU kit's is built by `python benchmarks/gpu/prepare.py`",
                    note=f"resolved: {path}")


@dataclass
class DatasetSpec:
    """What `sftpack prepare FAMILY --source SOURCE` writes into the run folder's dataset_info/."""

    family: str = key("gsm8k", choices=_families)
    source: str = "sample"           # 'sample' = the sample shipped in the package; else a local file/folder
    _at: At | None = field(default=None, repr=False, compare=False)   # its place: `source` resolves there

    def resolved_source(self) -> str:
        if self.source == "sample":
            from sftpack.samples import sample_dir

            return str(sample_dir(self.family))
        return str(_relative(_substitute(self.source), self._at)[0])


@dataclass
class Defaults:
    """Values every run starts from."""

    presets: list[str] = key(factory=list, choices=lambda: sorted(PRESETS))
    llamafactory: dict[str, Any] = key(factory=dict)
    swift: dict[str, Any] = key(factory=dict)
    env: dict[str, Scalar] = key(factory=dict)
    repeats: int = key(1, ge=1)
    timeout_s: float = key(1800.0, gt=0, hint="seconds")
    gpus: int = key(0, ge=0)
    requires: list[str] = key(factory=list, hint="importable Python module names")


@dataclass
class RunSpec:
    """One benchmark run: a framework CLI on a shipped config plus overrides, repeated `repeats` times."""

    name: str = key(pattern=NAME_PATTERN, hint="letters, digits, '_', '-', '.': it names the result folder")
    framework: str = key(choices=FRAMEWORKS)
    config: str = key(hint="a framework config YAML, relative to the suite file")
    group: str | None = None
    overrides: dict[str, Any] = key(factory=dict)
    env: dict[str, Scalar] = key(factory=dict)
    repeats: int | None = key(None, ge=1)     # None: defaults.repeats
    timeout_s: float | None = key(None, gt=0, hint="seconds")   # None: defaults.timeout_s
    gpus: int | None = key(None, ge=0)        # GPUs the run uses; > 1 launches NPROC_PER_NODE=gpus processes
    requires: list[str] | None = key(None, hint="importable Python module names")   # missing one: run skipped
    _at: At | None = field(default=None, repr=False, compare=False)   # its place: `config` resolves there

    def check(self, at: At) -> None:
        if not self.config_path.is_file():
            places = _relative(_substitute(self.config), self._at)[1]
            at["config"].error("no such file", self.config, "a framework config YAML, relative to the suite file",
                               note=f"resolved: {places_text(places)}")
        for name in sorted(set(self.overrides) & set(HARNESS_KEYS[self.framework])):
            at["overrides", name].error("set by the harness for every run; remove it",
                                        expected=f"none of the harness-owned keys for {self.framework}: "
                                                 f"{list(HARNESS_KEYS[self.framework])}")

    @property
    def config_path(self) -> Path:
        return _relative(_substitute(self.config), self._at)[0]


@dataclass
class OverheadSpec:
    """Measure the harness's own cost: run `run`'s command bare and under the harness, alternately."""

    run: str = key(hint="the name of a run")
    repeats: int = key(2, ge=0)


@dataclass
class TimeModel:
    """What `sftpack bench SUITE --plan` assumes to plan a suite's time (sftpack.bench.flops.planned_run_s)."""

    peak_tflops: float = key(gt=0)            # the GPU's dense bf16 peak
    assumed_mfu: float = key(gt=0, le=1)      # share of the peak the training loop reaches (a guess until measured)
    tokens_per_sample: float = key(gt=0)      # mean tokens per training row as the configs render it
    startup_s: float = key(ge=0)              # per run: imports, model load, tokenising (no training)
    save_gb_per_s: float = key(1.0, gt=0)     # writing a full model (bf16: 2 bytes per parameter)
    liger_compile_s: float = key(0.0, ge=0)   # Triton compilation of Liger's kernels, per run that uses them
    setup_s: float = key(0.0, ge=0)           # once per suite outside `bench` (e.g. the GPU kit's install + build)


@dataclass
class Suite:
    """A benchmark suite file (see the module docstring)."""

    runs: list[RunSpec] = key()
    model: ModelSpec = key()
    dataset: DatasetSpec = key(factory=DatasetSpec)
    name: str | None = key(None, pattern=NAME_PATTERN)   # default: the file's name
    description: str = ""
    defaults: Defaults = key(factory=Defaults)
    fairness: str = key("refuse", choices=FAIRNESS_MODES)   # refuse: stop before an unfair pair; mark: run, flag it
    sample_interval_s: float = key(0.2, gt=0, hint="seconds")   # memory sampling period (and NVML on GPU)
    overhead: OverheadSpec | None = None
    time_model: TimeModel | None = None       # lets `--plan` estimate the suite's time before running it
    path: Path | None = field(default=None, init=False)

    def check(self, at: At) -> None:
        if not self.runs:
            at["runs"].error("empty", self.runs, "a non-empty list of runs")
        names = [run.name for run in self.runs]
        for index, name in enumerate(names):
            if name in names[:index]:
                at["runs", index, "name"].error("run names must be unique; repeated", name, "a new name")
        for group, members in self.groups().items():
            frameworks = sorted(run.framework for run in members)
            if frameworks != sorted(FRAMEWORKS):
                index = self.runs.index(members[-1])
                at["runs", index, "group"].error(
                    "a group must hold exactly one llamafactory and one swift run (a comparison pair)", group,
                    f"one run of each framework; it holds {[(r.name, r.framework) for r in members]}")
        if self.overhead is not None and self.overhead.run not in names:
            at["overhead", "run"].error("not a run of this suite", self.overhead.run,
                                        spec.one_of(names, self.overhead.run))
        for index, run in enumerate(self.runs):
            if run.config_path.is_file():
                spec.training_rules(run.framework, run.config_path, self.overrides(run),
                                    lambda name, i=index, r=run: at[self._set_by(i, r, name)])

    def _set_by(self, index: int, run: RunSpec, name: str) -> tuple:
        """The key path that gives `run` its override `name` (the run, then defaults, then a preset)."""
        if name in run.overrides:
            return ("runs", index, "overrides", name)
        if name in getattr(self.defaults, run.framework):
            return ("defaults", run.framework, name)
        return ("defaults", "presets")

    # -- resolved values ---------------------------------------------------------------------------------
    def run(self, name: str) -> RunSpec:
        return next(run for run in self.runs if run.name == name)

    def groups(self) -> dict[str, list[RunSpec]]:
        groups: dict[str, list[RunSpec]] = {}
        for run in self.runs:
            if run.group is not None:
                groups.setdefault(run.group, []).append(run)
        return groups

    def repeats(self, run: RunSpec) -> int:
        return run.repeats if run.repeats is not None else self.defaults.repeats

    def timeout_s(self, run: RunSpec) -> float:
        return float(run.timeout_s if run.timeout_s is not None else self.defaults.timeout_s)

    def gpus(self, run: RunSpec) -> int:
        return run.gpus if run.gpus is not None else self.defaults.gpus

    def requires(self, run: RunSpec) -> list[str]:
        return list(self.defaults.requires) + list(run.requires or [])

    def overrides(self, run: RunSpec) -> dict[str, Any]:
        """The run's overrides before the harness adds its own keys (presets, defaults, run; `{repo}` filled)."""
        merged: dict[str, Any] = {}
        for preset in self.defaults.presets:
            merged.update(PRESETS[preset][run.framework])
        merged.update(getattr(self.defaults, run.framework))
        merged.update(run.overrides)
        return {key: _substitute(value) for key, value in merged.items()}

    def env(self, run: RunSpec) -> dict[str, str]:
        return {str(k): str(_substitute(v)) for k, v in {**self.defaults.env, **run.env}.items()}


def _unshared(value: Any) -> Any:
    """A copy in which no mapping or list is shared (YAML anchors alias one object: `swift: *plain`), so that
    `--set defaults.swift.x=1` changes only Swift's defaults."""
    if isinstance(value, Mapping):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def apply_sets(data: dict, sets: list[str], where: str, doc: spec.Doc | None = None) -> dict:
    """`--set KEY.PATH=VALUE` overrides on a suite's raw mapping (VALUE read as YAML), before validation.

    `--set defaults.gpus=0 --set model.build_shape=tiny --set 'defaults.presets=[tiny_cpu]'`. A path runs
    through mappings only (runs are a list: change them in the file); missing mappings on the way are created.
    With `doc`, the values set are marked so that errors about them say `--set` instead of a line.
    """
    import yaml

    for item in sets:
        key_path, sep, raw = item.partition("=")
        if not sep or not key_path.strip():
            raise SuiteError(f"{where}: --set {item!r}: expected KEY.PATH=VALUE, e.g. defaults.gpus=0")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise SuiteError(f"{where}: --set {item!r}: the value is not valid YAML: {err}") from None
        node = data
        parts = key_path.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
                if doc is not None:
                    doc.mark_set(tuple(parts[:depth + 1]))
            if not isinstance(child, dict):
                raise SuiteError(f"{where}: --set {item!r}: {'.'.join(parts[:depth + 1])} is a "
                                 f"{type(child).__name__}, not a mapping")
            node = child
        node[parts[-1]] = value
        if doc is not None:
            doc.mark_set(tuple(parts))
    return data


def load_suite(path: str | Path, sets: list[str] | None = None) -> Suite:
    """Read and check a suite YAML (after `--set` overrides); every problem is raised at once, naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path} (resolved: {path.resolve()})")
    doc = spec.load(path, SuiteError)
    data = doc.data
    if isinstance(data, Mapping):
        data = apply_sets(_unshared(data), list(sets or []), str(path), doc)
        data.setdefault("name", path.stem)
    suite = spec.build(Suite, data, doc, SuiteError)
    suite.path = path.resolve()
    return suite
