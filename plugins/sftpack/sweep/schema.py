"""The sweep YAML as small dataclasses checked by sftpack.spec (file:line errors, every problem at once), and its
cells: one training + one evaluation each, with the resolved spec that keys it.

    name: cpu_example
    base: ../pipelines/tiny_cpu.yaml          # a pipeline: model, data, each framework's training, eval
    model: {build_shape: tiny}                # keys of the base's model / eval sections replaced
    eval: {limit: 3}
    overrides:                                # on every cell's training, per framework (its own key names)
      llamafactory: {max_steps: 4}
      swift: {max_steps: 4}
    configs:                                  # the config each framework trains for each value of `method`
      lora: {llamafactory: ../../train_configs/qwen_gsm8k.yaml, swift: ../../train_configs/swift/qwen_lora_gsm8k.yaml}
      full: {llamafactory: ../../train_configs/qwen_full_gsm8k.yaml, swift: ../../train_configs/swift/qwen_full_gsm8k.yaml}
    axes:                                     # what an axis sets, when it is not the config key of its name
      cutoff: {key: {llamafactory: cutoff_len, swift: max_length}}
    grid:                                     # the cells: the union of each entry's product of values
      - {framework: [llamafactory, swift], method: [lora], learning_rate: [1.0e-3, 3.0e-3]}
      - {framework: [llamafactory, swift], method: [full], learning_rate: [3.0e-4, 1.0e-3]}

Axes: `framework` (default: every training of the base), `method` (a key of `configs`), a config key (the axis
name, or `axes.<name>.key`: one name or one per framework), a recipe variable (`axes.<name>.recipe_var`, or
`recipe_vars: {label: {var: value}}` to set several per value). `seeds: [..]` repeats every cell (the `seed` key).
Relative paths in a sweep (`base`, `configs`, `recipe.path`) resolve against the sweep file's folder; errors print
the resolved path.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpack import frameworks as fw
from sftpack import spec
from sftpack.pipeline.schema import EvalSpec, ModelSpec, Pipeline, TrainSpec, load_pipeline
from sftpack.spec import At, key

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
BUILTIN_AXES = ("framework", "method")
SEED_AXIS = "seed"
_NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
Value = str | int | float | bool


class SweepError(spec.SpecError):
    """A sweep YAML that cannot run as written."""


@dataclass
class AxisSpec:
    """What one axis sets. Exactly one of the three; an axis not declared is the config key of its name."""

    key: str | dict[str, str] | None = None           # a config key: one name, or {framework: name}
    recipe_var: str | None = None                     # a variable of `recipe`
    recipe_vars: dict[str, dict[str, Value]] | None = None   # {value label: {recipe variable: value}}

    def check(self, at: At) -> None:
        given = [name for name in ("key", "recipe_var", "recipe_vars") if getattr(self, name) is not None]
        if len(given) != 1:
            at.error("give exactly one of key, recipe_var, recipe_vars", given or None)
        if isinstance(self.key, dict):
            for name in self.key:
                if name not in fw.FRAMEWORKS:
                    at["key", name].error("unknown framework", name, spec.one_of(fw.FRAMEWORKS, name))


@dataclass
class RecipeSpec:
    """Data made per cell by `sftpack recipe` (into a copy of the base's dataset_info/); its output is the dataset
    each cell trains on. The recipe's own relative paths resolve against the current folder, as `sftpack recipe`."""

    path: str = key(hint="a recipe YAML, relative to the sweep file")
    vars: dict[str, Value] = key(factory=dict)        # fixed variables (`--var`), on top of the recipe's own
    _at: At | None = field(default=None, repr=False, compare=False)


@dataclass
class EstimateSpec:
    """`--plan`'s time model for this machine; cells already finished in the output folder replace it."""

    train_startup_s: float = key(20.0, ge=0, hint="seconds per training before its first step")
    train_step_s: float = key(1.0, ge=0, hint="seconds per optimizer step")
    eval_startup_s: float = key(25.0, ge=0, hint="seconds per lm-eval run before its first question")
    eval_question_s: float = key(1.0, ge=0, hint="seconds per question")


@dataclass
class Sweep:
    name: str = key(pattern=NAME_PATTERN, hint="letters, digits, '_', '-', '.': it names the output folder")
    base: str = key(hint="a pipeline YAML (sftpack run), relative to the sweep file")
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = key(
        hint="{axis: [values]} or a list of them (the cells: the union of their products)")
    description: str = ""
    model: dict[str, Any] = key(factory=dict, hint="keys of the base's model section replaced")
    eval: dict[str, Any] = key(factory=dict, hint="keys of the base's eval section replaced")
    overrides: dict[str, dict[str, Any]] = key(factory=dict, hint="{framework: {config key: value}}")
    configs: dict[str, dict[str, str]] = key(factory=dict, hint="{method: {framework: config YAML}}")
    axes: dict[str, AxisSpec] = key(factory=dict)
    timeout_s: float | None = key(None, gt=0, hint="seconds per training; default: the base's train entry's")
    seeds: list[int] | None = key(None, hint="repeat every cell with each seed; the report gives the spread")
    select: str = key("exact_match,strict-match", pattern=r"[^,\s]+,[^,\s]+",
                      hint="lm-eval's 'metric,filter' of the first eval task that ranks cells, or "
                           "format_rate,strict-match")
    recipe: RecipeSpec | None = None
    evaluate_base: bool = False      # also evaluate the base model once (a reference row)
    estimate: EstimateSpec = key(factory=EstimateSpec)
    path: str | None = key(None, internal=True)
    pipeline: Pipeline | None = key(None, internal=True)    # the base, with `model` and `eval` applied
    _at: At | None = field(default=None, repr=False, compare=False)

    @property
    def folder(self) -> Path:
        return Path(self.path).parent if self.path else Path.cwd()

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.folder / path).resolve()

    def grids(self) -> list[dict[str, list[Any]]]:
        return [self.grid] if isinstance(self.grid, dict) else list(self.grid)

    def check(self, at: At) -> None:
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            at["seeds"].error("give distinct seeds", self.seeds, "a non-empty list of distinct integers")
        for name in self.overrides:
            if name not in fw.FRAMEWORKS:
                at["overrides", name].error("unknown framework", name, spec.one_of(fw.FRAMEWORKS, name))
        self._check_grid(at)

    def check_files(self, at: At) -> None:
        """The files the sweep names, resolved against its folder (once `path` is known)."""
        base = self.resolve(self.base)
        if not base.is_file():
            at["base"].error("no such pipeline file", self.base, "a pipeline YAML, relative to the sweep file",
                             note=f"resolved: {base}")
        for method, per in self.configs.items():
            for name, config in per.items():
                if name not in fw.FRAMEWORKS:
                    at["configs", method, name].error("unknown framework", name, spec.one_of(fw.FRAMEWORKS, name))
                elif not self.resolve(config).is_file():
                    at["configs", method, name].error("no such file", config, "a framework config YAML, relative "
                                                      "to the sweep file", note=f"resolved: {self.resolve(config)}")
        if self.recipe is not None and not self.resolve(self.recipe.path).is_file():
            at["recipe", "path"].error("no such file", self.recipe.path, note=f"resolved: "
                                       f"{self.resolve(self.recipe.path)}")

    def _check_grid(self, at: At) -> None:
        grids = self.grids()
        if not grids:
            at["grid"].error("no cells", self.grid, "at least one {axis: [values]}")
        for index, grid in enumerate(grids):
            where = at["grid", index] if isinstance(self.grid, list) else at["grid"]
            if not grid:
                where.error("no axes", grid, "{axis: [values]}")
            for axis, values in grid.items():
                if not values:
                    where[axis].error("no values", values, "a non-empty list")
                for i, value in enumerate(values):
                    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
                        where[axis, i].error("a number written as a string (YAML 1.1 reads 1e-3 as text)", value,
                                             "a number with a dot, e.g. 1.0e-3")
                    elif not isinstance(value, (str, int, float, bool)):
                        where[axis, i].error("wrong type", value, "a scalar", typed=True)
                self._check_axis(axis, values, where[axis])

    def _check_axis(self, axis: str, values: list[Any], at: At) -> None:
        declared = self.axes.get(axis)
        if axis == SEED_AXIS:
            at.error("`seed` is not a grid axis", expected="seeds: [..] at the top level")
        elif axis == "framework":
            for i, value in enumerate(values):
                if value not in fw.FRAMEWORKS:
                    at[i].error("unknown framework", value, spec.one_of(fw.FRAMEWORKS, value))
        elif axis == "method":
            for i, value in enumerate(values):
                if value not in self.configs:
                    at[i].error("no config for this method", value, "a key of `configs` "
                                f"({', '.join(self.configs) or 'none given'})")
        elif declared is not None and declared.recipe_vars is not None:
            for i, value in enumerate(values):
                if str(value) not in declared.recipe_vars:
                    at[i].error("no recipe_vars for this value", value,
                                spec.one_of(list(declared.recipe_vars), str(value)))
        if declared is not None and (declared.recipe_var or declared.recipe_vars) and self.recipe is None:
            at.error("a recipe-variable axis, but the sweep has no `recipe`", expected="recipe: {path: ...}")


# ---------------------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One training + evaluation: its axis values and the training it resolves to."""

    name: str                       # folder and eval label: from the axis values
    axes: dict[str, Any]            # axis -> value, in the grid's order (framework first), seed last
    framework: str
    train: TrainSpec                # config (resolved) + merged overrides + timeout
    recipe_vars: dict[str, str]     # empty: the base's data
    grid_index: int

    @property
    def group(self) -> str:
        """The cell's name without its seed: seeds of one cell share it."""
        return cell_name({k: v for k, v in self.axes.items() if k != SEED_AXIS})


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cell_name(axes: dict[str, Any]) -> str:
    """'llamafactory_lora_learning_rate-0.001': framework and method values bare, other axes as name-value."""
    parts = [value_text(v) if k in BUILTIN_AXES else f"{k}-{value_text(v)}" for k, v in axes.items()]
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", "_".join(parts)) or "cell"


def _settings(sweep: Sweep, axis: str, value: Any, framework: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(training overrides, recipe variables) that axis value sets for `framework`."""
    declared = sweep.axes.get(axis)
    if declared is None:
        return {axis: value}, {}
    if declared.recipe_var is not None:
        return {}, {declared.recipe_var: value_text(value)}
    if declared.recipe_vars is not None:
        return {}, {k: value_text(v) for k, v in declared.recipe_vars[str(value)].items()}
    name = declared.key.get(framework) if isinstance(declared.key, dict) else declared.key
    return ({name: value} if name else {}), {}


def _repo_text(path: Path) -> str:
    """A config path as pipelines write it (relative to the repository root when inside it): stable keys."""
    try:
        return Path(path).resolve().relative_to(fw.REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return str(path)


def expand(sweep: Sweep, at: At | None = None) -> list[Cell]:
    """Every cell, in grid order; each cell's training is checked like a pipeline's train entry (file:line of the
    grid entry that made it). Raises SweepError with every problem."""
    pipeline = sweep.pipeline
    base_trainings = {t.framework: t for t in pipeline.train}
    at = at or spec.nowhere("grid")
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for index, grid in enumerate(sweep.grids()):
        where = at["grid", index] if isinstance(sweep.grid, list) else at["grid"]
        axes = dict(grid)
        if "framework" not in axes:
            axes = {"framework": list(base_trainings), **axes}
        else:
            axes = {"framework": axes.pop("framework"), **axes}
        names = list(axes)
        seeds = sweep.seeds or [None]
        for combo in itertools.product(*(axes[name] for name in names), seeds):
            values = dict(zip(names, combo[:-1]))
            if combo[-1] is not None:
                values[SEED_AXIS] = combo[-1]
            framework = values["framework"]
            if framework not in base_trainings:
                where["framework"].error(f"the base {pipeline.path} has no training for this framework", framework,
                                         f"one of {list(base_trainings)}")
                continue
            base = base_trainings[framework]
            config = base.config_path
            if "method" in values:
                per = sweep.configs[values["method"]]
                if framework not in per:
                    where["method"].error(f"configs.{values['method']} has no config for {framework}",
                                          values["method"], f"configs: {{{values['method']}: {{{framework}: ...}}}}")
                    continue
                config = sweep.resolve(per[framework])
            overrides = {**base.overrides, **sweep.overrides.get(framework, {})}
            recipe_vars: dict[str, str] = {}
            for axis, value in values.items():
                if axis in BUILTIN_AXES:
                    continue
                if axis == SEED_AXIS:
                    overrides["seed"] = value
                    continue
                sets, variables = _settings(sweep, axis, value, framework)
                overrides.update(sets)
                recipe_vars.update(variables)
            train = TrainSpec(framework=framework, config=_repo_text(config), overrides=overrides,
                              timeout_s=sweep.timeout_s or base.timeout_s)
            train.check(where)
            name = cell_name(values)
            if name in seen:
                where.error(f"cell {name} is also made by grid entry {seen[name]}", expected="each cell once")
                continue
            seen[name] = index
            cells.append(Cell(name, values, framework, train, recipe_vars, index))
    return cells


# ----------------------------------------------------------------------------------------------------- load
def _merged(section: type, base_value: Any, changes: dict[str, Any], at: At) -> Any:
    """A base pipeline section with the sweep's keys replaced, checked again (errors at the sweep's line)."""
    data = {f: getattr(base_value, f) for f in ("path", "build_shape", "seed", "download", "tokenizer",
                                                 "tokenizer_required")} if section is ModelSpec else \
        {f: getattr(base_value, f) for f in ("tasks", "limit", "device", "batch_size", "dtype", "gen_kwargs")}
    if section is EvalSpec and base_value.include_path is not None:   # the base file's folder, as an absolute path
        data["include_path"] = str(base_value.tasks_folder)
    return spec.build_at(section, {**data, **changes}, at)


def load_sweep(path: Path) -> tuple[Sweep, list[Cell]]:
    """Read and check a sweep file and its base pipeline; (the sweep, its cells). Every problem at once."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    doc = spec.load(path, SweepError)
    sweep = spec.build(Sweep, doc.data, doc, SweepError)
    sweep.path = str(path)
    at = At(doc)
    sweep.check_files(at)
    spec.raise_problems(at.problems, SweepError)
    base = load_pipeline(sweep.resolve(sweep.base))      # its own errors name its own file
    chained = [t.label for t in base.train if t.after]
    if chained:   # a cell is one training from the base model; a stage chain is not swept (yet)
        at["base"].error(f"the base pipeline chains train stages ({', '.join(chained)} start from an earlier "
                         "stage); a sweep cell trains once from the base model", sweep.base,
                         "a pipeline with one train entry per framework")
        spec.raise_problems(at.problems, SweepError)
    base.parallel = 1   # cells run one at a time, each with every core (a pipeline's `parallel` is for its stages)
    if sweep.model:
        base.model = _merged(ModelSpec, base.model, sweep.model, at["model"])
    if sweep.eval:
        base.eval = _merged(EvalSpec, base.eval, sweep.eval, at["eval"])
    spec.raise_problems(at.problems, SweepError)
    sweep.pipeline = base
    cells = expand(sweep, at)
    spec.raise_problems(at.problems, SweepError)
    return sweep, cells
