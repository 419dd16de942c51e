"""Recipe and mixture files: YAML -> small dataclasses, with errors that name the file, line and key.

A recipe file has the top-level keys of `Recipe`; a mixture file has one top-level key, `mixture`
(see `Mixture`). `${name}` in any string is replaced by a var: the recipe's `vars`, overridden on the
command line with `--var name=value`, plus the built-in `recipe_dir` (the recipe file's folder).
Relative paths resolve against the current directory (like LLaMA-Factory's `dataset_dir`); errors print
the resolved path.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from sftpack import dataset_info
from sftpack.errors import SftpackError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VAR_RE = re.compile(r"\$\{([^}]*)\}")
BUILTIN_VARS = ("recipe_dir",)


class Where:
    """A place in a recipe file for error messages: 'recipe.yaml line 12: steps[3] (sample)'."""

    def __init__(self, path: Path, line: int | None = None, key: str = ""):
        self.path, self.line, self.key = path, line, key

    def at(self, key: str, line: int | None = None) -> "Where":
        sep = "" if not self.key or key.startswith("[") else "."
        return Where(self.path, line or self.line, f"{self.key}{sep}{key}")

    def __str__(self) -> str:
        text = str(self.path) + (f" line {self.line}" if self.line else "")
        return text + (f": {self.key}" if self.key else "")

    def error(self, message: str) -> SftpackError:
        return SftpackError(f"{self}: {message}")


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping and list, by object id."""

    def __init__(self, stream):
        super().__init__(stream)
        self.lines: dict[int, int] = {}

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=True)
        self.lines[id(mapping)] = node.start_mark.line + 1
        return mapping

    def construct_sequence(self, node, deep=False):
        sequence = super().construct_sequence(node, deep=True)
        self.lines[id(sequence)] = node.start_mark.line + 1
        return sequence


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_sequence)


@dataclass
class Doc:
    """A loaded YAML document with the line of each of its mappings/lists."""

    path: Path
    data: Any
    lines: dict[int, int]

    def line(self, obj: Any) -> int | None:
        return self.lines.get(id(obj))

    def where(self, obj: Any, key: str = "") -> Where:
        return Where(self.path, self.line(obj), key)


def load_yaml(path: Path) -> Doc:
    path = Path(path)
    if not path.is_file():
        raise SftpackError(f"{path}: no such recipe file (resolved to {path.resolve()})")
    loader = _LineLoader(path.read_text(encoding="utf-8"))
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        place = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SftpackError(f"{path}{place}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SftpackError(f"{path}: must hold a YAML mapping (a recipe or a `mixture:`)")
    return Doc(path, data, loader.lines)


# ---------------------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_PLURAL.get(typing.get_args(tp)[0], 'items')}"
    if origin is dict:
        key, value = typing.get_args(tp)
        return f"a mapping of {_PLURAL.get(key, 'keys')} to {_PLURAL.get(value, 'values')}"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


_PLURAL = {str: "strings", int: "integers", float: "numbers", bool: "booleans", dict: "mappings"}


def coerce(value: Any, tp: Any, where: Where) -> Any:
    """`value` checked against the annotation `tp` (str/int/float/bool, list, dict, Literal, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except SftpackError as err:
                errors.append(err)
        raise where.error(f"must be {_type_name(tp)}, got {value!r:.60}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise where.error(f"must be one of {list(typing.get_args(tp))}, got {value!r:.60}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and typing.get_args(tp)[0] is str and isinstance(value, str):
            value = [value]  # a single field name is a list of one
        if not isinstance(value, list):
            raise where.error(f"must be {_type_name(tp)}, got {value!r:.60}")
        return [coerce(item, typing.get_args(tp)[0], where.at(f"[{i}]")) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(f"must be {_type_name(tp)}, got {value!r:.60}")
        key_tp, value_tp = typing.get_args(tp)
        return {coerce(k, key_tp, where.at(str(k))): coerce(v, value_tp, where.at(str(k))) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is dict:  # checked key by key later; kept as the same object so its line stays known
        if not isinstance(value, dict):
            raise where.error(f"must be a mapping, got {value!r:.60}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(f"must be true or false, got {value!r:.60}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"must be an integer, got {value!r:.60}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(f"must be a number, got {value!r:.60}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise where.error(f"must be a string, got {value!r:.60}")
        return str(value)
    raise TypeError(f"unsupported annotation {tp}")


def allowed_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def build(cls: type, data: Any, where: Where, **extra: Any):
    """`cls(**data)` with every key checked: unknown keys and missing required keys name what is allowed."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise where.error(f"must be a mapping of {allowed_keys(cls)}, got {data!r:.60}")
    allowed = allowed_keys(cls)
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise where.error(f"unknown keys {unknown}. Expected: {allowed}")
    hints = typing.get_type_hints(cls)
    kwargs = dict(extra)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or f.name in extra:
            continue
        if f.name in data:
            kwargs[f.name] = coerce(data[f.name], hints[f.name], where.at(f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.error(f"missing required key '{f.name}'. Keys: {allowed}")
    try:
        obj = cls(**kwargs)
    except (SftpackError, ValueError) as err:
        raise where.error(str(err)) from None
    except Exception as err:
        from sftpack.converters import FieldError

        if not isinstance(err, FieldError):
            raise
        raise where.error(str(err)) from None
    obj._where = where
    return obj


# ---------------------------------------------------------------------------------------------- schemas


@dataclass(kw_only=True)
class InputSpec:
    """One source of rows. `path`: a .jsonl/.json/.csv/.parquet/.arrow file, a folder (with `glob`: every
    matching file, sorted; without: the `split` files of a dataset folder), or a hub id."""

    name: str
    path: str
    glob: str | None = None           # e.g. "*.csv" for CMMLU's one CSV per subject
    file_field: str | None = None     # add each row's file name (without suffix) as this field, e.g. subject
    columns: list[str] | None = None  # CSV without a header row (MMLU layout): the column names
    split: str = "train"              # for a dataset folder or hub id
    subset: str | None = None         # hub subset (config)
    converter: str | None = None      # validate/convert every row with a sftpack converter (e.g. gsm8k)
    _where: Any = None

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise SftpackError(f"input name {self.name!r} must be letters, digits, '_', '.', '-'")
        if self.converter is not None:
            from sftpack.converters import CONVERTERS

            if self.converter not in CONVERTERS:
                raise SftpackError(f"unknown converter {self.converter!r}. Expected: {sorted(CONVERTERS)}")


@dataclass(kw_only=True)
class OutputSpec:
    """Where the rows go: `<out>/<name>.jsonl` and the dataset_info entry `<name>` (with a `split` tag, e.g.
    from `epoch_split`: one file and entry per split, `<name>_<split>`). Without a `format` step, `columns`
    (and `formatting`/`tags` if not alpaca) describe the rows as they are, with LLaMA-Factory's keys."""

    name: str
    formatting: str | None = None
    columns: dict[str, str] | None = None
    tags: dict[str, str] | None = None
    _where: Any = None

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise SftpackError(f"output name {self.name!r} must be letters, digits, '_', '.', '-'")

    def entry(self) -> dict[str, Any] | None:
        if self.columns is None and self.formatting is None and self.tags is None:
            return None
        entry: dict[str, Any] = {"formatting": self.formatting or "alpaca"}
        if self.columns is not None:
            entry["columns"] = dict(self.columns)
        if self.tags is not None:
            entry["tags"] = dict(self.tags)
        return entry


@dataclass(kw_only=True)
class StatsSpec:
    """Token length statistics of the written rows (the text of the entry's columns), with `tokenizer`."""

    tokenizer: str | None = None
    _where: Any = None


@dataclass(kw_only=True)
class Recipe:
    description: str = ""
    seed: int = 0
    vars: dict[str, str] = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    output: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    _where: Any = None


@dataclass(kw_only=True)
class Mixture:
    """A mixture over dataset_info names, written to `<out>/<name>.mix.yaml`.

    `mode: probability` (the default): weights -> LLaMA-Factory `dataset`/`mix_strategy`/`interleave_probs` and
    the Swift `name#N` form of the same mix (rows drawn at random, so a batch's composition varies).
    `mode: per_batch`: `batch` quotas -> one JSON-lines dataset `<name>.jsonl` (+ its dataset_info entry) whose
    every block of B = sum(quotas) consecutive rows holds each set's quota, and the keys that keep that order
    in each framework (see `sftpack.recipes.mixture`)."""

    name: str
    mode: Literal["probability", "per_batch"] = "probability"
    # mode: probability
    datasets: dict[str, float] = field(default_factory=dict)   # dataset_info names: relative weights
    total: int | None = None          # rows in the mix (Swift counts); default: the most without repeats
    strategy: Literal["interleave_under", "interleave_over"] = "interleave_under"
    # mode: per_batch
    batch: dict[str, int] = field(default_factory=dict)        # dataset_info names: rows in every global batch
    global_batch_size: int | None = None          # B, if given: must equal the sum of the quotas (a typo guard)
    per_device_train_batch_size: int | None = None   # micro-batch; default B (gradient_accumulation_steps 1)
    world_size: int = 1               # processes (GPUs) the keys are written for: per_device x accumulation x world = B
    seed: int = 0                     # which rows land in which block, and their places inside it
    _where: Any = None

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise SftpackError(f"mixture name {self.name!r} must be letters, digits, '_', '.', '-'")
        if self.mode == "per_batch":
            self._check_per_batch()
            return
        stray = [k for k in ("batch", "global_batch_size", "per_device_train_batch_size")
                 if getattr(self, k) not in ({}, None)] + [k for k, default in (("world_size", 1), ("seed", 0))
                                                           if getattr(self, k) != default]
        if stray:
            raise SftpackError(f"{stray} belong to `mode: per_batch`; this mixture is `mode: probability` "
                               "(weights in `datasets`)")
        if len(self.datasets) < 2:
            raise SftpackError(f"'datasets' needs at least two names, got {list(self.datasets)}")
        bad = {k: v for k, v in self.datasets.items() if not v > 0}
        if bad:
            raise SftpackError(f"weights must be > 0, got {bad}")
        if self.total is not None and self.total < 1:
            raise SftpackError(f"'total' must be >= 1, got {self.total}")

    @property
    def batch_size(self) -> int:
        """B, the global batch of a per_batch mixture: the sum of the quotas."""
        return sum(self.batch.values())

    def _check_per_batch(self) -> None:
        stray = [k for k in ("datasets", "total") if getattr(self, k) not in ({}, None)]
        if self.strategy != "interleave_under":
            stray.append("strategy")
        if stray:
            raise SftpackError(f"{stray} belong to `mode: probability`; `mode: per_batch` takes `batch: "
                               "{name: rows per batch, ...}`")
        if len(self.batch) < 2:
            raise SftpackError(f"'batch' needs at least two names with their rows per batch, got {self.batch}")
        bad = {k: v for k, v in self.batch.items() if v < 1}
        if bad:
            raise SftpackError(f"batch quotas must be integers >= 1, got {bad}")
        size = self.batch_size
        if self.global_batch_size is not None and self.global_batch_size != size:
            raise SftpackError(f"the batch quotas {self.batch} sum to {size}, not global_batch_size "
                               f"{self.global_batch_size}; fix one of them")
        if self.world_size < 1:
            raise SftpackError(f"'world_size' must be >= 1, got {self.world_size}")
        micro = self.per_device_train_batch_size
        if micro is None:
            micro = size // self.world_size
            if micro * self.world_size != size:
                raise SftpackError(f"the global batch {size} does not split over world_size {self.world_size}: "
                                   "set per_device_train_batch_size (per_device x accumulation x world = "
                                   f"{size})")
        if micro < 1 or size % (micro * self.world_size):
            raise SftpackError(f"per_device_train_batch_size {micro} x world_size {self.world_size} does not divide "
                               f"the global batch {size} (per_device x gradient_accumulation_steps x world = B); "
                               f"divisors of {size}: {[d for d in range(1, size + 1) if size % d == 0]}")

    @property
    def micro_batch(self) -> int:
        return self.per_device_train_batch_size or self.batch_size // self.world_size

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch * self.world_size)


# ---------------------------------------------------------------------------------------------- vars


def substitute(data: Any, variables: Mapping[str, str], where: Where, doc: Doc) -> Any:
    """Replace `${name}` in every string of `data` (a new structure; lines are carried over)."""
    if isinstance(data, str):
        whole = VAR_RE.fullmatch(data)
        if whole and whole.group(1) in variables:  # "${n}" alone takes the var's YAML type: 20 -> int
            try:
                value = yaml.safe_load(variables[whole.group(1)])
            except yaml.YAMLError:
                value = None
            return value if isinstance(value, (int, float, bool)) else variables[whole.group(1)]

        def one(match: re.Match) -> str:
            name = match.group(1)
            if name not in variables:
                raise where.error(f"unknown var ${{{name}}}. Defined: {sorted(variables)} "
                                  "(add it under `vars:` or fix the name)")
            return variables[name]
        return VAR_RE.sub(one, data)
    if isinstance(data, dict):
        out = {k: substitute(v, variables, where.at(str(k), doc.line(data)), doc) for k, v in data.items()}
        if id(data) in doc.lines:
            doc.lines[id(out)] = doc.lines[id(data)]
        return out
    if isinstance(data, list):
        out_list = [substitute(v, variables, where.at(f"[{i}]", doc.line(data)), doc) for i, v in enumerate(data)]
        if id(data) in doc.lines:
            doc.lines[id(out_list)] = doc.lines[id(data)]
        return out_list
    return data


def parse_var_overrides(pairs: list[str] | None) -> dict[str, str]:
    overrides = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SftpackError(f"--var {pair!r}: expected NAME=VALUE")
        overrides[name] = value
    return overrides


def resolve_vars(doc: Doc, overrides: Mapping[str, str]) -> dict[str, str]:
    declared = doc.data.get("vars") or {}
    where = doc.where(declared, "vars")
    if not isinstance(declared, dict):
        raise where.error("must be a mapping of name: value")
    for name in declared:
        if name in BUILTIN_VARS:
            raise where.error(f"'{name}' is built in; choose another name")
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise SftpackError(f"--var {unknown}: not declared in {doc.path} `vars:`. Declared: {sorted(declared)}")
    variables = {name: str(value) for name, value in declared.items()}
    variables.update(overrides)
    variables["recipe_dir"] = str(doc.path.resolve().parent)
    for name, value in list(variables.items()):
        if VAR_RE.search(value):
            raise where.error(f"var '{name}' = {value!r}: vars cannot refer to other vars")
    return variables


def validate_dataset_entry(name: str, entry: dict, where: Where) -> None:
    try:
        dataset_info.validate_entry(name, dict(entry, file_name=f"{name}.jsonl"), where=str(where))
    except SftpackError as err:
        raise SftpackError(str(err)) from None
