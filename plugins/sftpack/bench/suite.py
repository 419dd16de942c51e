"""Benchmark suite schema: small dataclasses read from `benchmarks/suites/*.yaml`; unknown keys are errors.

    from sftpack.bench.suite import load_suite
    suite = load_suite("benchmarks/suites/cpu_tiny.yaml")

A suite names a model, a dataset and a list of runs. Each run is one framework CLI (`llamafactory` or `swift`)
on one shipped config (`train_configs/...`) plus overrides. Overrides are merged in this order: the presets
named in `defaults.presets` (e.g. `tiny_cpu` = `sftpack.frameworks.TINY_CPU_LF` / `TINY_CPU_SWIFT`), then
`defaults.<framework>`, then the run's own `overrides`; the harness then sets the keys it owns (model path,
`output_dir`, token counting, the Swift dataset plugin), so a suite may not set those. In override and env
string values, `{repo}` is replaced by the repository root (paths in configs otherwise resolve against the
run's working folder, not the repo). Runs sharing a `group` are one comparison pair: exactly one
`llamafactory` and one `swift` run, checked for fairness (sftpack.bench.fairness) before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sftpack import frameworks as fw
from sftpack.errors import SftpackError

FRAMEWORKS = ("llamafactory", "swift")
FAIRNESS_MODES = ("refuse", "mark")
# Named override sets, one dict per framework; the values live in sftpack.frameworks (one source of truth).
PRESETS: dict[str, dict[str, Mapping[str, Any]]] = {
    "tiny_cpu": {"llamafactory": fw.TINY_CPU_LF, "swift": fw.TINY_CPU_SWIFT},
}
# Keys the harness sets itself for every run (see runner.harness_overrides).
HARNESS_KEYS = {
    "llamafactory": ("model_name_or_path", "output_dir", "include_num_input_tokens_seen"),
    "swift": ("model", "output_dir", "include_num_input_tokens_seen", "external_plugins", "add_version"),
}


class SuiteError(SftpackError):
    """A suite file is invalid; the message names the file, the entry and the fix."""


def _from_mapping(cls, data: Any, where: str):
    """Build dataclass `cls` from a YAML mapping; unknown keys raise, listing the allowed ones."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SuiteError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    allowed = [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {unknown}. Allowed: {allowed}")
    try:
        return cls(**data, _where=where)
    except TypeError as err:  # a missing required key
        raise SuiteError(f"{where}: {err}. Allowed keys: {allowed}") from None


def _check_type(where: str, key: str, value: Any, types: tuple, hint: str) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise SuiteError(f"{where}: '{key}' must be {hint}, got {value!r}")


def _check_timeout(where: str, value: Any) -> None:
    _check_type(where, "timeout_s", value, (int, float), "seconds > 0 (a number)")
    if value <= 0:
        raise SuiteError(f"{where}: 'timeout_s' must be seconds > 0, got {value!r}")


def _substitute(value: Any) -> Any:
    """`{repo}` in strings (also inside lists) -> the repository root."""
    if isinstance(value, str):
        return value.replace("{repo}", str(fw.REPO_ROOT))
    if isinstance(value, list):
        return [_substitute(item) for item in value]
    return value


@dataclass
class ModelSpec:
    """The model every run trains. `path` when it exists offline, else built with sftpack.tiny_model."""

    path: str | None = None          # a local folder or a hub id looked up in this machine's HF/ModelScope cache
    build_shape: str | None = None   # sftpack.tiny_model.SHAPES key; random weights, built offline
    seed: int = 0
    tokenizer: str | None = None     # tokenizer folder for the built model (default: the tiny GSM8K-trained one)
    _where: str = field(default="model", repr=False)

    def __post_init__(self) -> None:
        from sftpack.tiny_model import SHAPES

        if self.path is None and self.build_shape is None:
            raise SuiteError(f"{self._where}: give 'path' (a local folder or hub id), 'build_shape' "
                             f"(one of {sorted(SHAPES)}), or both (build_shape is used when path is unavailable)")
        if self.build_shape is not None and self.build_shape not in SHAPES:
            raise SuiteError(f"{self._where}: build_shape {self.build_shape!r} unknown. Expected: {sorted(SHAPES)}")
        _check_type(self._where, "seed", self.seed, (int,), "an integer")
        if self.tokenizer is not None:
            _check_type(self._where, "tokenizer", self.tokenizer, (str,), "a folder path")

    def tokenizer_path(self) -> Path | None:
        """The tokenizer folder, resolved against the repo root; None = the tiny model's own tokenizer."""
        if self.tokenizer is None:
            return None
        path = Path(_substitute(self.tokenizer)).expanduser()
        return path if path.is_absolute() else (fw.REPO_ROOT / path).resolve()

    def check_tokenizer(self) -> None:
        """The tokenizer folder must exist before a model is built with it (checked before any run)."""
        path = self.tokenizer_path()
        if path is not None and not (path / "tokenizer_config.json").is_file():
            raise SuiteError(f"{self._where}.tokenizer {self.tokenizer!r}: no tokenizer folder at "
                             f"{path} (no tokenizer_config.json). The GPU kit's tokenizer is built by "
                             "`python benchmarks/gpu/prepare.py`")


@dataclass
class DatasetSpec:
    """What `sftpack prepare FAMILY --source SOURCE` writes into the run folder's dataset_info/."""

    family: str = "gsm8k"
    source: str = "sample"           # 'sample' = the sample shipped in the package; else a local file/folder
    _where: str = field(default="dataset", repr=False)

    def __post_init__(self) -> None:
        from sftpack.converters import CONVERTERS

        if self.family not in CONVERTERS:
            raise SuiteError(f"{self._where}: family {self.family!r} unknown. Expected: {sorted(CONVERTERS)}")

    def resolved_source(self) -> str:
        if self.source == "sample":
            from sftpack.samples import sample_dir

            return str(sample_dir(self.family))
        path = Path(_substitute(self.source))
        return str(path if path.is_absolute() else fw.REPO_ROOT / path)


@dataclass
class Defaults:
    """Values every run starts from."""

    presets: list = field(default_factory=list)
    llamafactory: dict = field(default_factory=dict)
    swift: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    repeats: int = 1
    timeout_s: float = 1800.0
    gpus: int = 0
    requires: list = field(default_factory=list)
    _where: str = field(default="defaults", repr=False)

    def __post_init__(self) -> None:
        for name in self.presets:
            if name not in PRESETS:
                raise SuiteError(f"{self._where}: preset {name!r} unknown. Expected: {sorted(PRESETS)}")
        for key in ("llamafactory", "swift", "env"):
            _check_type(self._where, key, getattr(self, key), (dict,), "a mapping")
        _check_type(self._where, "repeats", self.repeats, (int,), "an integer >= 1")
        _check_type(self._where, "gpus", self.gpus, (int,), "an integer >= 0")
        _check_timeout(self._where, self.timeout_s)


@dataclass
class RunSpec:
    """One benchmark run: a framework CLI on a shipped config plus overrides, repeated `repeats` times."""

    name: str
    framework: str
    config: str
    group: str | None = None
    overrides: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    repeats: int | None = None       # None: defaults.repeats
    timeout_s: float | None = None   # None: defaults.timeout_s
    gpus: int | None = None          # GPUs the run uses; > 1 launches NPROC_PER_NODE=gpus processes
    requires: list | None = None     # importable Python modules; a run missing one is recorded as skipped
    _where: str = field(default="runs[]", repr=False)

    def __post_init__(self) -> None:
        _check_type(self._where, "name", self.name, (str,), "a string")
        if not self.name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise SuiteError(f"{self._where}: name {self.name!r} must be letters, digits, '_', '-', '.' "
                             "(it names the result folder)")
        if self.framework not in FRAMEWORKS:
            raise SuiteError(f"{self._where}: framework {self.framework!r} unknown. Expected: {list(FRAMEWORKS)}")
        if not self.config_path.is_file():
            raise SuiteError(f"{self._where}: config {self.config!r} not found (resolved against the repo root: "
                             f"{self.config_path})")
        for key in ("overrides", "env"):
            _check_type(self._where, key, getattr(self, key), (dict,), "a mapping")
        for key in ("repeats", "gpus"):
            if getattr(self, key) is not None:
                _check_type(self._where, key, getattr(self, key), (int,), "an integer")
        if self.timeout_s is not None:
            _check_timeout(self._where, self.timeout_s)
        if self.requires is not None:
            _check_type(self._where, "requires", self.requires, (list,), "a list of Python module names")
        owned = sorted(set(self.overrides) & set(HARNESS_KEYS[self.framework]))
        if owned:
            raise SuiteError(f"{self._where}: {owned} are set by the harness for every run; remove them "
                             f"(harness-owned keys for {self.framework}: {list(HARNESS_KEYS[self.framework])})")

    @property
    def config_path(self) -> Path:
        path = Path(_substitute(self.config))
        return path if path.is_absolute() else (fw.REPO_ROOT / path).resolve()


@dataclass
class OverheadSpec:
    """Measure the harness's own cost: run `run`'s command bare and under the harness, alternately."""

    run: str
    repeats: int = 2
    _where: str = field(default="overhead", repr=False)

    def __post_init__(self) -> None:
        _check_type(self._where, "repeats", self.repeats, (int,), "an integer >= 0")


@dataclass
class TimeModel:
    """What `sftpack bench SUITE --plan` assumes to plan a suite's time (sftpack.bench.flops.planned_run_s)."""

    peak_tflops: float               # the GPU's dense bf16 peak
    assumed_mfu: float               # share of the peak the training loop reaches (a guess until measured)
    tokens_per_sample: float         # mean tokens per training row as the configs render it
    startup_s: float                 # per run: imports, model load, tokenising (no training)
    save_gb_per_s: float = 1.0       # writing a full model (bf16: 2 bytes per parameter)
    liger_compile_s: float = 0.0     # Triton compilation of Liger's kernels, per run that uses them
    setup_s: float = 0.0             # once per suite outside `bench` (e.g. the GPU kit's install + model build)
    _where: str = field(default="time_model", repr=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not f.name.startswith("_"):
                _check_type(self._where, f.name, getattr(self, f.name), (int, float), "a number >= 0")
                if getattr(self, f.name) < 0:
                    raise SuiteError(f"{self._where}: '{f.name}' must be >= 0, got {getattr(self, f.name)!r}")
        if not 0 < self.assumed_mfu <= 1 or self.peak_tflops <= 0 or self.tokens_per_sample <= 0:
            raise SuiteError(f"{self._where}: need 0 < assumed_mfu <= 1, peak_tflops > 0, tokens_per_sample > 0")


@dataclass
class Suite:
    """A benchmark suite file (see the module docstring)."""

    runs: list
    model: Any
    dataset: Any = None
    name: str | None = None
    description: str = ""
    defaults: Any = None
    fairness: str = "refuse"         # refuse: stop before running an unfair pair; mark: run, flag not comparable
    sample_interval_s: float = 0.2   # memory sampling period of the process tree (and NVML on GPU)
    overhead: Any = None
    time_model: Any = None           # TimeModel: lets `--plan` estimate the suite's time before running it
    _where: str = field(default="suite", repr=False)
    path: Path | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        where = self._where
        self.model = _from_mapping(ModelSpec, self.model, f"{where}: model")
        self.dataset = _from_mapping(DatasetSpec, self.dataset, f"{where}: dataset")
        self.defaults = _from_mapping(Defaults, self.defaults, f"{where}: defaults")
        if self.fairness not in FAIRNESS_MODES:
            raise SuiteError(f"{where}: fairness {self.fairness!r} unknown. Expected: {list(FAIRNESS_MODES)}")
        _check_type(where, "sample_interval_s", self.sample_interval_s, (int, float), "seconds > 0")
        if not isinstance(self.runs, list) or not self.runs:
            raise SuiteError(f"{where}: 'runs' must be a non-empty list of runs")
        self.runs = [_from_mapping(RunSpec, run, f"{where}: runs[{i}]"
                                   + (f" ({run.get('name')})" if isinstance(run, Mapping) else ""))
                     for i, run in enumerate(self.runs)]
        names = [run.name for run in self.runs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SuiteError(f"{where}: run names must be unique; repeated: {duplicates}")
        for group, members in self.groups().items():
            frameworks = sorted(run.framework for run in members)
            if frameworks != sorted(FRAMEWORKS):
                raise SuiteError(f"{where}: group {group!r} must hold exactly one llamafactory and one swift run "
                                 f"(a comparison pair); it holds {[(r.name, r.framework) for r in members]}")
        if self.time_model is not None:
            self.time_model = _from_mapping(TimeModel, self.time_model, f"{where}: time_model")
        if self.overhead is not None:
            self.overhead = _from_mapping(OverheadSpec, self.overhead, f"{where}: overhead")
            if self.overhead.run not in names:
                raise SuiteError(f"{where}: overhead.run {self.overhead.run!r} is not a run. Runs: {names}")

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


def apply_sets(data: dict, sets: list[str], where: str) -> dict:
    """`--set KEY.PATH=VALUE` overrides on a suite's raw mapping (VALUE read as YAML), before validation.

    `--set defaults.gpus=0 --set model.build_shape=tiny --set 'defaults.presets=[tiny_cpu]'`. A path runs
    through mappings only (runs are a list: change them in the file); missing mappings on the way are created.
    """
    import yaml

    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SuiteError(f"{where}: --set {item!r}: expected KEY.PATH=VALUE, e.g. defaults.gpus=0")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise SuiteError(f"{where}: --set {item!r}: the value is not valid YAML: {err}") from None
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SuiteError(f"{where}: --set {item!r}: {'.'.join(parts[:depth + 1])} is a "
                                 f"{type(child).__name__}, not a mapping")
            node = child
        node[parts[-1]] = value
    return data


def load_suite(path: str | Path, sets: list[str] | None = None) -> Suite:
    """Read and validate a suite YAML (after `--set` overrides); errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path} (resolved: {path.resolve()})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise SuiteError(f"{path}: expected a mapping at the top level")
    data = apply_sets(_unshared(data), list(sets or []), str(path))
    data.setdefault("name", path.stem)
    suite = _from_mapping(Suite, data, str(path))
    suite.path = path.resolve()
    return suite
