"""The pipeline YAML as small dataclasses, checked by sftpack.spec before any work: types, ranges, choices, unknown
keys, config files, eval task names, LoRA keys and step counts. Errors name file:line and key, all at once.

    name: tiny_cpu
    requires_gpu: false
    model: {path: null, build_shape: small, seed: 0}   # + tokenizer: FOLDER for the built model
    data: {family: gsm8k, source: sample}
    train:
      - {framework: llamafactory, config: train_configs/qwen_full_gsm8k.yaml, overrides: {...}}
      - {framework: swift, config: train_configs/swift/qwen_full_gsm8k.yaml, overrides: {...}}
    eval: {tasks: [gsm8k-local-chat], limit: 40, device: cpu, batch_size: "1"}   # + include_path: TASK_FOLDER
    parallel: 1          # 2: the train stages (and the lm-eval runs) two at a time, sharing the cores

`sftpack run PIPELINE --check` validates a file and prints its stages without running them. Relative paths
(configs, local model/data/tokenizer folders) resolve against the pipeline file's folder, not the current directory
(`config: ../../train_configs/qwen_full_gsm8k.yaml` in benchmarks/pipelines/), so a folder made by `sftpack init`
runs its own copies. Backward compatibility: a path that is not there but is under the assets root (files written
when paths were relative to the repository root: `config: train_configs/...`) resolves there (sftpack.assets.relative).
Errors print every place looked.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpack import frameworks as fw
from sftpack import spec
from sftpack.assets import places_text, relative
from sftpack.frameworks.common import model_path_problem
from sftpack.spec import At, key

FRAMEWORKS = fw.FRAMEWORKS
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"   # a pipeline's name names its output folder
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")   # what model.tokenizer's folder must hold
# Keys the pipeline sets itself in every training command (model, output folder, token counting).
PIPELINE_KEYS = {name: adapter.harness_keys for name, adapter in fw.ADAPTERS.items()}


class PipelineError(spec.SpecError):
    """A pipeline YAML that cannot run as written."""


def spec_path(value: str, at: At | None) -> Path:
    """A path written in the pipeline file at `at`, resolved against the file's folder (sftpack.assets.relative)."""
    return (at.relative(value) if at is not None else relative(value, None))[0]


def looked(value: str, at: At | None) -> str:
    """Every place `value` was looked for, for an error: 'A' or 'A (nor B)'."""
    return places_text((at.relative(value) if at is not None else relative(value, None))[1])


def _shapes() -> list[str]:
    from sftpack.tiny_model import SHAPES

    return sorted(SHAPES)


def _families() -> list[str]:
    from sftpack.converters import CONVERTERS

    return sorted(CONVERTERS)


@dataclass
class ModelSpec:
    path: str | None = None           # local folder or hub id (HuggingFace, then ModelScope); None = build
    build_shape: str | None = key(None, choices=_shapes)   # random weights of this shape (`sftpack tiny-model`):
    #                                 when `path` is None, or as the declared fallback when `path` cannot be had
    seed: int = key(0, ge=0)
    download: bool = False            # try the hubs for `path` when it is not on this machine (never when offline)
    tokenizer: str | None = None      # a tokenizer folder for the built model (`sftpack tiny-model --tokenizer`)
    tokenizer_required: bool = True   # false: an absent `tokenizer` folder -> the built tokenizer, said in the report
    _at: At | None = field(default=None, repr=False, compare=False)   # its place in the file, for later errors

    def check(self, at: At) -> None:
        if self.path is None and self.build_shape is None:
            at.error("nothing to train", expected=f"`path` (a folder or hub id) or `build_shape` (one of {_shapes()})")
        if self.path is not None:
            # sftpack.paths' rule: a local-looking path (`./m`, `work/tinyy`, `x.safetensors`) that is not there is
            # an error now, never a hub lookup or random weights later; `build_shape` stands in for hub ids only
            problem = model_path_problem(self.path, bases=(at.doc.folder,) if at.doc.folder else ())
            if problem is not None:
                at["path"].error(problem, self.path, "a model folder (with config.json), or a hub id (looked up in "
                                 "this machine's cache, downloaded with `download: true`)")
        if self.tokenizer is not None:
            self._check_tokenizer(at["tokenizer"])

    def _check_tokenizer(self, at: At) -> None:
        if self.build_shape is None:
            at.error("used only when the model is built", self.tokenizer,
                     "model.build_shape set too, or no model.tokenizer")
            return
        folder = spec_path(self.tokenizer, self._at)
        if not folder.exists():
            if self.tokenizer_required:
                at.error("no such folder", self.tokenizer, note=f"resolved: {looked(self.tokenizer, self._at)}",
                         expected=
                         "a tokenizer folder: write it first (e.g. the GPU kit's prepare step), or set "
                         "model.tokenizer_required: false to build with the byte-level tokenizer instead")
            return
        missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
        if missing:
            at.error(f"{folder} holds no {' / '.join(missing)}", self.tokenizer,
                     "a tokenizer saved by transformers' save_pretrained (Qwen2.5's own folder has both)")

    @property
    def tokenizer_path(self) -> Path | None:
        """The resolved `tokenizer` folder when it is there; None when unset or (not required and) absent."""
        if self.tokenizer is None:
            return None
        folder = spec_path(self.tokenizer, self._at)
        return folder if folder.is_dir() else None

    @property
    def bases(self) -> tuple[Path, ...]:
        """Folders a relative `path` is looked up in first: the pipeline file's (then the assets root, the cwd)."""
        return (self._at.doc.folder,) if self._at is not None and self._at.doc.folder else ()

    def resolved_tokenizer(self) -> str:
        """Where `tokenizer` was looked for, for messages."""
        return looked(self.tokenizer or "", self._at)


@dataclass
class RecipeSpec:
    """A recipe (or mixture) the data stage runs into the run's dataset_info/ after `family`'s data: its outputs
    are dataset names the train entries can use (`overrides: {dataset: NAME}`)."""

    recipe: str = key(hint="a recipe or mixture YAML, relative to the pipeline file")
    vars: dict[str, Any] = key(factory=dict, hint="the recipe's --var values (paths in them are the recipe's: "
                                                   "relative to the current folder, or use ${recipe_dir})")
    _at: At | None = field(default=None, repr=False, compare=False)

    def check(self, at: At) -> None:
        if not self.path.is_file():
            at["recipe"].error("no such file", self.recipe, "a recipe YAML, relative to the pipeline file",
                               note=f"resolved: {looked(self.recipe, self._at)}")
            return
        from sftpack.errors import SftpackError
        from sftpack.recipes.run import load_recipe

        try:
            if not self.is_mixture:
                load_recipe(self.path, self.run_vars(Path("dataset_info")))
        except SftpackError as err:
            at["recipe"].error(f"the recipe does not load: {err}", self.recipe)

    @property
    def path(self) -> Path:
        return spec_path(self.recipe, self._at)

    @property
    def var_values(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.vars.items()}

    def run_vars(self, dataset_info: Path) -> dict[str, str]:
        """`vars`, plus `dataset_info` = the run's dataset_info/ folder when the recipe declares that var and the
        pipeline does not set it: a recipe reads what the data stage prepared (`${dataset_info}/gsm8k_train.jsonl`)."""
        import yaml

        values = self.var_values
        try:
            declared = (yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}).get("vars") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            declared = {}
        if "dataset_info" in declared and "dataset_info" not in values:
            values["dataset_info"] = str(dataset_info)
        return values

    @property
    def is_mixture(self) -> bool:
        import yaml

        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return False
        return isinstance(data, dict) and "mixture" in data


@dataclass
class DataSpec:
    family: str = key("gsm8k", choices=_families)   # a converter of `sftpack prepare`
    source: str = "sample"            # "sample" = the rows shipped in the package; else a folder or hub id
    fallback_source: str | None = None  # used (and said in the report) when `source` cannot be read, e.g. no hub
    recipes: list[RecipeSpec] = key(factory=list, hint="recipes run after the family's data, in order")
    _at: At | None = field(default=None, repr=False, compare=False)   # its place: local paths resolve there

    def resolved_source(self, source: str | None = None) -> str:
        source = self.source if source is None else source
        if source == "sample":
            from sftpack.samples import sample_dir

            return str(sample_dir(self.family))
        local = spec_path(source, self._at)
        return str(local) if local.exists() else source   # else a hub id


@dataclass
class TrainSpec:
    framework: str = key(choices=FRAMEWORKS)
    config: str = key(hint="a framework config YAML, relative to the pipeline file")
    overrides: dict[str, Any] = key(factory=dict)
    timeout_s: float = key(3600.0, gt=0, hint="seconds")
    name: str | None = key(None, pattern=NAME_PATTERN, hint="names the stage (train_<name>); needed when a framework "
                                                            "has several train entries")
    after: str | None = key(None, hint="the `name` of the earlier entry of this framework whose output this one "
                                       "starts from (multi-stage training)")
    adapter: str | None = key(None, choices=("merge", "continue"),
                              hint="when `after` trained a LoRA adapter: merge it into the base model and train "
                                   "on that, or continue training the same adapter")
    kind: str = key("sft", choices=("sft", "pt"), hint="sft, or pt: pretraining on plain text (LLaMA-Factory "
                                                       "stage pt, `swift pt`) from a `format: {to: text}` recipe")
    mixture: str | None = key(None, hint="the name of a `mode: per_batch` mixture in data.recipes: its dataset "
                                         "and the keys that keep each batch's composition are added to overrides")
    _at: At | None = field(default=None, repr=False, compare=False)   # its place: `config` resolves there
    mixture_keys: dict[str, Any] = key(factory=dict, internal=True)   # what `mixture` added (set by the check)

    def check(self, at: At) -> None:
        adapter = fw.adapter(self.framework)
        # a chained stage: the pipeline loads the earlier stage's adapter with the framework's own keys
        chained = set(adapter.continue_adapter(Path("."))) if self.after else set()
        owned = set(PIPELINE_KEYS[self.framework]) | chained
        for name in sorted(set(self.overrides) & owned):
            at["overrides", name].error("set by the pipeline itself; remove it", expected=f"none of {sorted(owned)}")
        for name in sorted(set(self.overrides) & set(adapter.kind_keys)):
            at["overrides", name].error("the pipeline sets it from `kind`", self.overrides[name],
                                        "kind: pt (pretraining) or kind: sft (the config's own)")
        if not self.config_path.is_file():
            at["config"].error("no such file", self.config, "a framework config YAML, relative to the pipeline file",
                               note=f"resolved: {looked(self.config, self._at)}")
            return
        spec.training_rules(self.framework, self.config_path, self.overrides, lambda name: at["overrides", name])

    @property
    def config_path(self) -> Path:
        """`config` resolved against the pipeline file's folder (a spec built in code: against the assets root)."""
        return spec_path(self.config, self._at)

    @property
    def label(self) -> str:
        """What names it in stages and reports: `name`, else the framework."""
        return self.name or self.framework

    @property
    def stage(self) -> str:
        return f"train_{self.label}"

    def method(self) -> str | None:
        """"lora", "full", ... as the framework reads this entry's config + overrides (None: unreadable)."""
        from sftpack.training import merged_config

        try:
            return fw.adapter(self.framework).normalise(merged_config(self.config_path, self.overrides))["method"]
        except (KeyError, TypeError, ValueError, OSError, spec.SpecError):
            return None


@dataclass
class RetentionSpec:
    """A retention task and the data its loader reads: `cmmlu-local[-SUBJECT]` / `mmlu-local[-SUBJECT]` (a CSV
    folder) or `squad-local` (a SQuAD JSON file); `data` relative to the pipeline file."""

    task: str = key(hint="cmmlu-local, mmlu-local (or one subject: cmmlu-local-agronomy) or squad-local")
    data: str = key(hint="the CSV folder (cmmlu/mmlu) or SQuAD JSON file (squad), relative to the pipeline file")
    _at: At | None = field(default=None, repr=False, compare=False)

    def check(self, at: At) -> None:
        from sftpack.evaluate.runner import RETENTION_DATA, retention_family

        family = retention_family(self.task)
        if family is None:
            at["task"].error("not a retention task", self.task, f"a task of {sorted(RETENTION_DATA)} (or one of "
                             "their subjects); other tasks go in eval.tasks")
            return
        kind = RETENTION_DATA[family][1]
        path = self.path
        if not (path.is_dir() if kind == "folder" else path.is_file()):
            at["data"].error(f"no such {kind}", self.data, f"the {family} data {kind}",
                             note=f"resolved: {looked(self.data, self._at)}")

    @property
    def path(self) -> Path:
        return spec_path(self.data, self._at)

    @property
    def metadata(self) -> dict[str, str]:
        from sftpack.evaluate.runner import RETENTION_DATA, retention_family

        return {RETENTION_DATA[retention_family(self.task)][0]: str(self.path)}


@dataclass
class EvalSpec:
    tasks: list[str] = key(factory=lambda: ["gsm8k-local-chat"], hint="task names of eval_tasks/ or lm-eval")
    limit: int | None = key(40, ge=1, hint="questions per task; null = the whole test split")
    device: str = "cpu"
    batch_size: str | int = key("1", hint='an integer, "auto" or "auto:N"')
    dtype: str | None = None
    gen_kwargs: str | None = None     # lm-eval --gen_kwargs, e.g. "max_gen_toks=64"
    include_path: str | None = key(None, hint="a task folder, relative to the pipeline file (default: the tasks "
                                              "shipped with sftpack)")
    parallel: int | None = key(None, ge=1, le=16, hint="lm-eval runs at the same time (default: the pipeline's "
                                                       "`parallel`)")
    retention: list[RetentionSpec] = key(factory=list, hint="retention tasks with their data, reported in their "
                                                             "own table")
    datasets: list[str] = key(factory=list, hint="dataset_info names the data stage writes (e.g. a recipe's _test "
                                                  "split), evaluated with the training prompt (`sftpack eval "
                                                  "--dataset`)")
    _at: At | None = field(default=None, repr=False, compare=False)   # its place: include_path resolves there

    def check(self, at: At) -> None:
        for index, retention in enumerate(self.retention):
            if retention.task in self.tasks:
                at["retention", index, "task"].error("also in eval.tasks", retention.task, "one of the two")
        if self.include_path is not None and not self.tasks_folder.is_dir():
            at["include_path"].error("no such folder", self.include_path, "a folder of lm-eval task YAMLs (e.g. "
                                     "../../eval_tasks in a folder made by `sftpack init`)",
                                     note=f"resolved: {looked(self.include_path, self._at)}")
            return
        if not self.tasks and not self.datasets:
            at["tasks"].error("empty", self.tasks, "at least one task name, e.g. [gsm8k-local-chat] (or eval.datasets)")
        if not re.fullmatch(r"auto(:[0-9]+)?|[1-9][0-9]*", str(self.batch_size)):   # what lm-eval --batch_size takes
            at["batch_size"].error("invalid", self.batch_size, 'an integer >= 1, "auto" or "auto:N"')
        retention = [r.task for r in self.retention]
        unknown, known = unknown_tasks(self.tasks + retention, self.tasks_folder)
        for where, names in (("tasks", self.tasks), ("retention", retention)):
            for index, name in enumerate(names):
                if name in unknown:
                    hint = spec.suggest(name, list(_declared_tasks(str(self.tasks_folder))))
                    place = at[where, index] if where == "tasks" else at[where, index, "task"]
                    place.error("unknown eval task", name, f"a task of {self.tasks_folder} ({known}) or an "
                                "lm-eval built-in task" + (f"; {hint}" if hint else ""))

    @property
    def tasks_folder(self) -> Path:
        """The task folder lm-eval reads: `include_path` resolved against the pipeline file, else the shipped one."""
        return fw.EVAL_TASKS if self.include_path is None else spec_path(self.include_path, self._at)


@dataclass
class Pipeline:
    name: str = key(pattern=NAME_PATTERN, hint="letters, digits, '_', '-', '.': it names the output folder")
    model: ModelSpec = key()
    train: list[TrainSpec] = key(hint="one entry per framework, or a chain of entries (`name`, `after`)")
    data: DataSpec = key(factory=DataSpec)
    eval: EvalSpec = key(factory=EvalSpec)
    requires_gpu: bool = False
    description: str = ""
    parallel: int = key(1, ge=1, le=16, hint="train stages (and lm-eval runs) at the same time; each gets cores / N "
                                             "CPU threads. 1: one after another, the cleanest time figures")
    path: str | None = key(None, internal=True)   # the YAML it was read from (set by load_pipeline)

    def check(self, at: At) -> None:
        if not self.train:
            at["train"].error("empty", [], f"one entry for each of {list(FRAMEWORKS)} (or a chain of entries each)")
            return
        self._add_mixture_keys(at)
        self._check_datasets(at)
        labels = [t.label for t in self.train]
        seen: dict[str, TrainSpec] = {}
        for index, t in enumerate(self.train):
            here = at["train", index]
            if labels.count(t.label) > 1:
                here.error("two train entries share this stage name", t.label,
                           "a distinct `name` for each entry of one framework")
                continue
            earlier = [e for e in seen.values() if e.framework == t.framework]
            if t.after is None:
                if earlier:
                    here["after"].error("missing: this framework already has an entry", None,
                                        f"after: {earlier[-1].label} (stages of one framework chain in file order)")
                if t.adapter is not None:
                    here["adapter"].error("only with `after`", t.adapter, "no adapter key on a first stage")
            elif not earlier or t.after != earlier[-1].label:
                here["after"].error("not the previous entry of this framework", t.after,
                                    f"{earlier[-1].label}" if earlier else "no `after` on a framework's first entry")
            else:
                self._check_chain(earlier[-1], t, here)
            seen[t.label] = t

    @staticmethod
    def _check_chain(before: TrainSpec, t: TrainSpec, at: At) -> None:
        """`t` starts from `before`'s output: a full model is its model; a LoRA adapter is merged or continued,
        as `adapter` says (continuing needs LoRA again)."""
        previous, method = before.method(), t.method()
        if previous == "lora" and t.adapter is None:
            at["adapter"].error(f"missing: {before.label} trains a LoRA adapter", None,
                                "adapter: merge (train on the base with it merged in) or adapter: continue (train "
                                "the same adapter further)")
        elif previous not in (None, "lora") and t.adapter is not None:
            at["adapter"].error(f"{before.label} trains {previous!r}, not a LoRA adapter", t.adapter,
                                f"no adapter key: this stage starts from {before.label}'s full model")
        elif t.adapter == "continue" and method not in (None, "lora"):
            at["adapter"].error(f"continuing a LoRA adapter needs a LoRA stage; this one trains {method!r}",
                                t.adapter, "adapter: merge, or a LoRA config")

    def dataset_names(self) -> set[str] | None:
        """The dataset_info names the data stage writes (the family's splits, each recipe's outputs, a per-batch
        mixture's dataset); None when a recipe cannot be read (its own check says why)."""
        from sftpack.converters import CONVERTERS
        from sftpack.recipes.mixture import load_mixture
        from sftpack.recipes.run import load_recipe

        names = {f"{self.data.family}_{split}" for split in CONVERTERS[self.data.family].splits}
        for recipe in self.data.recipes:
            try:
                if recipe.is_mixture:
                    mix = load_mixture(recipe.path, recipe.var_values)
                    names |= {mix.name} if mix.mode == "per_batch" else set()
                else:
                    names |= set(load_recipe(recipe.path, recipe.run_vars(Path("dataset_info"))).dataset_names())
            except Exception:  # noqa: BLE001 - the recipe's own check reports it
                return None
        return names

    def mixtures(self) -> dict[str, Any]:
        """The mixtures of data.recipes that load: {name: sftpack.recipes.schema.Mixture}."""
        from sftpack.recipes.mixture import load_mixture

        found = {}
        for recipe in self.data.recipes:
            if recipe.is_mixture and recipe.path.is_file():
                try:
                    mix = load_mixture(recipe.path, recipe.var_values)
                except Exception:  # noqa: BLE001 - the recipe's own check reports it
                    continue
                found[mix.name] = mix
        return found

    def _add_mixture_keys(self, at: At) -> None:
        """A train entry's `mixture`: the per-batch mixture's keys for its framework join its overrides (the
        dataset, no shuffling, the batch rule); an override that contradicts one is an error."""
        from sftpack.recipes.mixture import per_batch_keys

        mixtures = self.mixtures()
        for index, t in enumerate(self.train):
            if t.mixture is None:
                continue
            mix = mixtures.get(t.mixture)
            if mix is None or mix.mode != "per_batch":
                per_batch = sorted(n for n, m in mixtures.items() if m.mode == "per_batch")
                at["train", index, "mixture"].error("not a per-batch mixture of data.recipes", t.mixture,
                                                    f"one of {per_batch} (a `mixture:` file with mode: per_batch)")
                continue
            lf, swift = per_batch_keys(mix)
            keys = {"llamafactory": lf, "swift": swift}[t.framework]
            clash = {k: v for k, v in t.overrides.items() if k in keys and keys[k] != v}
            if clash:
                at["train", index, "overrides"].error(f"contradicts mixture {t.mixture}'s keys", clash,
                                                      f"none of them, or the mixture's values {keys}")
                continue
            t.mixture_keys = dict(keys)
            t.overrides = {**keys, **t.overrides}

    def _check_datasets(self, at: At) -> None:
        """Every dataset a train entry (config + overrides) or eval.datasets names is one the data stage writes:
        a typo is an error now, not a framework's error after the model and data stages."""
        from sftpack.training import merged_config

        names = self.dataset_names()
        if names is None:
            return
        written = f"the data stage writes {sorted(names)} (data.family's splits and data.recipes' outputs)"
        for index, t in enumerate(self.train):
            if not t.config_path.is_file():
                continue
            value = merged_config(t.config_path, t.overrides).get("dataset")
            given = value.split(",") if isinstance(value, str) else list(value or [])
            for name in given:
                name = str(name).strip().split("#")[0]   # Swift's name#N
                if name and name not in names:
                    place = at["train", index, "overrides", "dataset"] if "dataset" in t.overrides else \
                        at["train", index, "config"]
                    place.error(f"dataset {name!r} is not written by this pipeline", value, written)
        for index, name in enumerate(self.eval.datasets):
            if name not in names:
                at["eval", "datasets", index].error("not written by this pipeline", name, written)

    def final_trains(self) -> list[TrainSpec]:
        """The last entry of each framework: the models the eval scores (labelled by framework)."""
        last: dict[str, TrainSpec] = {}
        for t in self.train:
            last[t.framework] = t
        return list(last.values())

    def previous(self, spec: TrainSpec) -> TrainSpec | None:
        """The entry `spec` starts from (its `after`), or None."""
        return next((t for t in self.train if spec.after is not None and t.label == spec.after), None)

    @classmethod
    def from_dict(cls, data: Any, where: str = "pipeline", doc: spec.Doc | None = None) -> Pipeline:
        """Build and check a pipeline from its mapping; `doc` (from spec.load) gives errors their line numbers."""
        return spec.build(cls, data, doc or spec.Doc(where, data), PipelineError)


_DECLARED = re.compile(r"^(task|group):[ \t]*([^\s#'\"]+)[ \t]*(?:#.*)?$", re.MULTILINE)


@functools.lru_cache(maxsize=8)
def _declared_tasks(folder: str = str(fw.EVAL_TASKS)) -> dict[str, tuple[str, str]]:
    """Task and group names declared in `folder`/**.yaml (default: eval_tasks/) -> ("task" or "group", the folder
    declaring it), read as text (no lm-eval import: a valid file is checked in milliseconds)."""
    names: dict[str, tuple[str, str]] = {}
    root = Path(folder)
    for path in sorted(root.rglob("*.yaml")):
        for kind, name in _DECLARED.findall(path.read_text(encoding="utf-8", errors="replace")):
            names.setdefault(name, (kind, path.parent.relative_to(root).as_posix()))
    return names


def _tasks_text(folder: str = str(fw.EVAL_TASKS)) -> str:
    """The tasks of `folder` in a line: the top-level ones, and each sub-folder's group with its task count."""
    declared = _declared_tasks(folder)
    top = sorted(name for name, (_, folder) in declared.items() if folder == ".")
    groups = []
    for folder in sorted({folder for _, folder in declared.values() if folder != "."}):
        inside = {name: kind for name, (kind, where) in declared.items() if where == folder}
        tasks = sum(kind == "task" for kind in inside.values())
        groups += [f"{name} (group of {tasks} tasks in {folder}/)" for name, kind in inside.items() if kind == "group"]
    return ", ".join(top + sorted(groups))


def _mentioned(names: list[str], folder: Path | None) -> set[str]:
    """Which of `names` occur anywhere in the YAML files under `folder` (a text search: no parsing, no import)."""
    found: set[str] = set()
    for path in sorted(folder.rglob("*.yaml")) if folder is not None and folder.is_dir() else ():
        text = path.read_text(encoding="utf-8", errors="replace")
        found.update(name for name in names if name in text)
        if len(found) == len(names):
            break
    return found


@functools.lru_cache(maxsize=32)
def _unknown_tasks(names: tuple[str, ...], folder: str) -> tuple[frozenset[str], str]:
    rest = [name for name in names if name not in _declared_tasks(folder)]
    if not rest:
        return frozenset(), _tasks_text(folder)
    import importlib.util

    lm_eval = importlib.util.find_spec("lm_eval")   # found without importing it (its import takes seconds)
    if lm_eval is None or lm_eval.origin is None:
        return frozenset(rest), _tasks_text(folder) + " (lm-eval is not installed: its built-in tasks were not checked)"
    builtin_dir = Path(lm_eval.origin).parent / "tasks"
    maybe = _mentioned(rest, Path(folder)) | _mentioned(rest, builtin_dir)
    unknown = set(rest) - maybe   # named in no task file at all: a typo, said without importing lm-eval
    if maybe:   # the rest as `sftpack eval` decides: lm-eval's index of eval_tasks/, then its built-in tasks
        from sftpack.evaluate.tasks import builtin_tasks, task_manager

        manager = task_manager(Path(folder))
        left = [name for name in maybe if name not in manager.task_index]
        unknown |= set(left) - (builtin_tasks(left) if left else set())
    return frozenset(unknown), _tasks_text(folder)


def unknown_tasks(names: list[str], folder: Path = fw.EVAL_TASKS) -> tuple[frozenset[str], str]:
    """The names neither `folder` (default: eval_tasks/) nor lm-eval's built-in tasks declare, and the tasks
    `folder` holds."""
    return _unknown_tasks(tuple(names), str(folder))


def load_pipeline(path: Path) -> Pipeline:
    path = Path(path).resolve()
    if not path.is_file():
        raise PipelineError(f"{path}: no such pipeline file")
    doc = spec.load(path, PipelineError)
    pipeline = Pipeline.from_dict(doc.data, str(path), doc)
    pipeline.path = str(path)
    return pipeline
