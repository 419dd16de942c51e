"""One spec mechanism for the YAML files sftpack runs: pipelines (`sftpack run`) and benchmark suites (`sftpack bench`).

A spec is a dataclass. Its annotations are the types a YAML value must have, checked strictly: no "false" for a
bool, no "5" for a number, no string where a list is expected (never split into characters). `key(...)` adds a
default, a range, choices or a pattern; a `check(self, at)` method adds cross-field and file rules, run once every
key of the object passed:

    @dataclass
    class TrainSpec:
        framework: str = key(choices=("llamafactory", "swift"))
        timeout_s: float = key(3600.0, gt=0, hint="seconds")

        def check(self, at: At) -> None:
            if not self.config_path.is_file():
                at["config"].error("no such file", got=self.config, expected="...")

    doc = load(path, PipelineError)                  # the data + the line of every key (anchors, `<<` merges too)
    spec = build(Pipeline, doc.data, doc, PipelineError)   # the object, or PipelineError listing every problem

Every problem of a file is reported at once, one line each, before any work:

    x.yaml:33: train[0].timeout_s: wrong type (got the string 'fast'); expected a number > 0 (seconds)

Unknown keys are errors that list the allowed ones. Fields named `_at` receive the object's place (for errors raised
later, e.g. at run time); other fields starting with `_`, `init=False` fields and `key(internal=True)` fields are
not YAML keys. The error class is the caller's (PipelineError, SuiteError: both SpecError, an SftpackError).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from sftpack.errors import SftpackError

SET = "--set"          # the "line" of a value given on the command line (`sftpack bench SUITE --set KEY=VALUE`)
_NOTHING = object()    # no `got` value to show
_BAD = object()        # a value that failed its check (the problem is recorded)


class SpecError(SftpackError):
    """A spec file that cannot run as written. `problems`: one Problem per finding (empty for a plain message)."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()):
        super().__init__(message)
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding: `FILE:LINE: key.path: problem (got VALUE); expected ...`."""

    file: str
    line: int | str | None
    key: str
    problem: str
    got: str | None = None
    expected: str | None = None
    path: tuple = dataclasses.field(default=(), repr=False, compare=False)   # the key as a path

    @property
    def place(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file} ({self.line})" if self.line == SET else f"{self.file}:{self.line}"

    def __str__(self) -> str:
        text = f"{self.place}: {self.key or '(top level)'}: {self.problem}"
        text += f" (got {self.got})" if self.got is not None else ""
        return text + (f"; expected {self.expected}" if self.expected else "")


def raise_problems(problems: list[Problem], error: type[SpecError]) -> None:
    """Raise `error` with every problem (sorted by line), or return when there is none."""
    if not problems:
        return
    problems = sorted(dict.fromkeys(problems), key=lambda p: p.line if isinstance(p.line, int) else 0)   # once each
    if len(problems) == 1:
        raise error(str(problems[0]), problems)
    files = sorted({p.file for p in problems})
    lines = "\n".join(f"  {p}" for p in problems)
    raise error(f"{len(problems)} problems in {', '.join(files)} (nothing was run):\n{lines}", problems)


# ------------------------------------------------------------------------------------------------ the YAML
class Doc:
    """A YAML document: its data and the line of every mapping key and list item, by key path
    (`("train", 0, "overrides", "max_steps")`). A value changed by `--set` has the line SET."""

    def __init__(self, name: str, data: Any = None, lines: dict[tuple, int | str] | None = None,
                 folder: Path | None = None):
        self.name, self.data, self.lines = name, data, dict(lines or {})
        self.folder = folder   # the file's folder: relative paths in it resolve there (None: built in code)

    def line(self, path: tuple) -> int | str | None:
        """The line of `path`, else of its nearest ancestor that has one (a key left out: its mapping's line)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def mark_set(self, path: tuple) -> None:
        """`path` (and everything under it) now comes from the command line."""
        self.lines = {p: line for p, line in self.lines.items() if p[:len(path)] != path}
        self.lines[path] = SET


def load(path: Path, error: type[SpecError]) -> Doc:
    """Read a YAML file (safe loader) and the line of every key and list item; invalid YAML raises `error`."""
    import yaml

    path = Path(path)
    loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        place = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(f"{place}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    finally:
        loader.dispose()
    lines: dict[tuple, int | str] = {}
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _record_lines(node, (), lines, 0)
    return Doc(str(path), data, lines, folder=path.resolve().parent)


def _record_lines(node: Any, path: tuple, lines: dict, depth: int) -> None:
    """Walk the composed nodes. Constructing the document already folded each `<<` merge into its mapping (merged
    keys first, the mapping's own keys after, so a key written in the mapping keeps its own line); an alias is the
    anchored node itself, so a value reached through `*name` has the line where the anchor defines it."""
    import yaml

    if depth > 64:   # a recursive alias
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[path + (key_node.value,)] = key_node.start_mark.line + 1
                _record_lines(value_node, path + (key_node.value,), lines, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _record_lines(item, path + (index,), lines, depth + 1)


# ----------------------------------------------------------------------------------------- places, problems
def key_text(path: tuple) -> str:
    """("train", 0, "overrides", "max_steps") -> "train[0].overrides.max_steps"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def show(value: Any, width: int = 70) -> str:
    """A value as YAML would write it, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def show_typed(value: Any) -> str:
    """A value with its YAML type: "the string 'false'", "a list ['a']", "null"."""
    if value is None:
        return "null"
    kinds = [(bool, "the boolean"), (str, "the string"), (int, "the integer"), (float, "the number"),
             (list, "a list"), (Mapping, "a mapping")]
    kind = next((name for tp, name in kinds if isinstance(value, tp)), f"a {type(value).__name__}")
    return f"{kind} {show(value)}"


class At:
    """A place in a spec file while it is checked; problems found there are collected, not raised one by one."""

    def __init__(self, doc: Doc, path: tuple = (), problems: list[Problem] | None = None):
        self.doc, self.path = doc, path
        self.problems: list[Problem] = [] if problems is None else problems

    def __getitem__(self, sub: str | int | tuple) -> At:
        return At(self.doc, self.path + (sub if isinstance(sub, tuple) else (sub,)), self.problems)

    @property
    def key(self) -> str:
        return key_text(self.path)

    @property
    def line(self) -> int | str | None:
        return self.doc.line(self.path)

    def relative(self, value: str) -> tuple[Path, list[Path]]:
        """`value`, a path written in this file, resolved against the file's folder (sftpack.assets.relative:
        (the path, every place looked))."""
        from sftpack.assets import relative

        return relative(value, self.doc.folder)

    def problem(self, problem: str, got: Any = _NOTHING, expected: str | None = None, typed: bool = False,
                note: str | None = None) -> Problem:
        shown = None if got is _NOTHING else (show_typed(got) if typed else show(got))
        if note:
            shown = note if shown is None else f"{shown}; {note}"
        return Problem(self.doc.name, self.line, self.key, problem, shown, expected, self.path)

    def error(self, problem: str, got: Any = _NOTHING, expected: str | None = None, typed: bool = False,
              note: str | None = None) -> None:
        """Record a problem here (`note`: said after the value, e.g. a resolved path); the file's problems are
        raised together at the end of `build`."""
        self.problems.append(self.problem(problem, got, expected, typed, note))

    def fail(self, error: type[SpecError], problem: str, got: Any = _NOTHING, expected: str | None = None,
             note: str | None = None) -> None:
        """Raise one problem now (a check made after loading, e.g. just before a run)."""
        found = self.problem(problem, got, expected, note=note)
        raise error(str(found), [found])

    def __str__(self) -> str:
        place = Problem(self.doc.name, self.line, self.key, "").place
        return f"{place}: {self.key}" if self.key else place


def nowhere(key: str) -> At:
    """The place of an object built in code, not read from a file (errors then name only the key)."""
    return At(Doc("spec"), (key,))


# -------------------------------------------------------------------------------------------------- rules
def key(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | Any = dataclasses.MISSING,
        gt: float | None = None, ge: float | None = None, le: float | None = None,
        choices: Iterable | Callable[[], Iterable] | None = None, pattern: str | None = None,
        hint: str | None = None, internal: bool = False) -> Any:
    """A spec field: its default (or `factory`), range (`gt`/`ge`/`le`), `choices` (a collection, or a function
    returning one, read when checked; for a list, each item), `pattern` (a regex a string must match fully),
    `hint` (said after "expected ..."), `internal` (not a YAML key)."""
    metadata = {"gt": gt, "ge": ge, "le": le, "choices": choices, "pattern": pattern, "hint": hint,
                "internal": internal}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def yaml_keys(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")
            and not f.metadata.get("internal")]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def type_name(tp: Any) -> str:
    """The expected type in words: 'an integer', 'a list of strings', "one of 'a', 'b'", 'a string or null'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(show(a) for a in args)
    if tp is list or origin is list:
        return "a list" + (f" of {_plural(args[0])}" if args and args[0] is not Any else "")
    if tp is dict or origin is dict:
        return "a mapping" + (f" of keys to {_plural(args[1])}" if len(args) == 2 and args[1] is not Any else "")
    if dataclasses.is_dataclass(tp):
        return f"a mapping with the keys {', '.join(f.name for f in yaml_keys(tp))}"
    names = {bool: "true or false (unquoted)", int: "an integer", float: "a number", str: "a string", Any: "anything"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join(_plural(a) for a in typing.get_args(tp) if a is not type(None))
    names = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
    return names.get(tp, "mappings" if dataclasses.is_dataclass(tp) or tp is dict else type_name(tp))


def fits(tp: Any, value: Any) -> bool:
    """Whether `value` has the YAML shape of `tp` (used to pick the member of a union to check deeply)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is list or origin is list:
        return isinstance(value, list)
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, Mapping)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _expected(tp: Any, meta: Mapping[str, Any]) -> str:
    bounds = [f"{op} {meta[name]:g}" for name, op in (("gt", ">"), ("ge", ">="), ("le", "<="))
              if meta.get(name) is not None]
    text = type_name(tp) + (" " + " and ".join(bounds) if bounds else "")
    return text + (f" ({meta['hint']})" if meta.get("hint") else "")


def suggest(word: Any, options: Iterable[Any]) -> str:
    """"did you mean 'limit'?" when one of `options` is close to `word`, else ''."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def one_of(options: Iterable[Any], word: Any = _NOTHING) -> str:
    """"one of 'a', 'b'" and, for a near miss `word`, "; did you mean 'b'?"."""
    options = list(options)
    hint = suggest(word, options) if word is not _NOTHING else ""
    return "one of " + ", ".join(show(o) for o in options) + (f"; {hint}" if hint else "")


def check_value(tp: Any, value: Any, at: At, meta: Mapping[str, Any] | None = None) -> Any:
    """`value` checked against annotation `tp` (and the field's rules); the value, or _BAD with the problem recorded."""
    meta = meta or {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        member = next((a for a in args if a is not type(None) and fits(a, value)), None)
        if member is None:
            at.error("wrong type", value, _expected(tp, meta), typed=True)
            return _BAD
        return check_value(member, value, at, meta)
    if dataclasses.is_dataclass(tp):
        return build_at(tp, value, at)
    if origin is Literal:
        if value not in args or type(value) not in {type(a) for a in args}:   # 1 is not True
            at.error("unknown value", value, one_of(args, value))
            return _BAD
        return value
    if not fits(tp, value):
        expected = _expected(tp, meta)
        if (tp is list or origin is list) and isinstance(value, str):
            expected += f", e.g. [{value}]"
        at.error("wrong type", value, expected, typed=True)
        return _BAD
    if tp is list or origin is list:
        item_tp = args[0] if args else Any
        items = [check_value(item_tp, item, at[i], meta) for i, item in enumerate(value)]
        return _BAD if any(item is _BAD for item in items) else items
    if tp is dict or origin is dict:
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        out, bad = {}, False
        for name, item in value.items():
            if key_tp is str and not isinstance(name, str):
                at[name].error("wrong type of key", name, "a string key (quote it)", typed=True)
                bad = True
                continue
            out[name] = check_value(value_tp, item, at[name])
            bad = bad or out[name] is _BAD
        return _BAD if bad else out
    return _rules(value, at, tp, meta)


def _rules(value: Any, at: At, tp: Any, meta: Mapping[str, Any]) -> Any:
    """Ranges, choices and pattern of one scalar that has the right type."""
    import re

    checks = (("gt", lambda v, b: v > b), ("ge", lambda v, b: v >= b), ("le", lambda v, b: v <= b))
    if isinstance(value, (int, float)) and any(not ok(value, meta[n]) for n, ok in checks if meta.get(n) is not None):
        at.error("out of range", value, _expected(tp, meta))
        return _BAD
    choices = meta.get("choices")
    if choices is not None:
        options = list(choices() if callable(choices) else choices)
        if value not in options:
            at.error("unknown value", value, one_of(options, value))
            return _BAD
    if meta.get("pattern") and isinstance(value, str) and not re.fullmatch(meta["pattern"], value):
        at.error("invalid", value, _expected(tp, meta))
        return _BAD
    return value


def build_at(cls: type, data: Any, at: At) -> Any:
    """Build dataclass `cls` from a YAML mapping at `at`, recording problems; the object, or _BAD."""
    if data is None:
        data = {}   # `eval:` with nothing under it: the defaults
    if not isinstance(data, Mapping):
        at.error("wrong type", data, type_name(cls), typed=True)
        return _BAD
    fields = yaml_keys(cls)
    names = [f.name for f in fields]
    unknown = [name for name in data if name not in names]
    for name in unknown:
        hint = suggest(name, names)
        at[name].error("unknown key" + (f" ({hint})" if hint else ""), expected="one of " + ", ".join(names))
    hints, values = _hints(cls), {}
    for f in fields:
        if f.name in data:
            values[f.name] = check_value(hints[f.name], data[f.name], at[f.name], f.metadata)
        elif _required(f):
            at[f.name].error("missing required key", expected=_expected(hints[f.name], f.metadata))
    failed = [name for name, value in values.items() if value is _BAD]
    if failed or unknown or _missing_required(cls, values):
        _check_partly(cls, {k: v for k, v in values.items() if v is not _BAD}, failed, at)
        return _BAD
    if any(f.name == "_at" for f in dataclasses.fields(cls)):
        values["_at"] = at
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(at)
    return obj


def _check_partly(cls: type, values: dict[str, Any], failed: list[str], at: At) -> None:
    """Run `cls.check` on an object whose failed keys take their defaults, so that one file shows every problem;
    keep only what it finds under keys that passed (not about the object as a whole, nor a failed key)."""
    if not hasattr(cls, "check") or _missing_required(cls, values):
        return
    found = At(at.doc, at.path)
    try:
        cls(**values).check(found)
    except Exception:   # noqa: BLE001 - a check of defaults standing in for wrong values; its problems are extra
        return
    depth = len(at.path)
    at.problems.extend(p for p in found.problems if len(p.path) > depth and p.path[depth] not in failed)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _missing_required(cls: type, values: Mapping[str, Any]) -> bool:
    return any(f.name not in values for f in yaml_keys(cls) if _required(f))


def build(cls: type, data: Any, doc: Doc, error: type[SpecError]) -> Any:
    """The object `cls` built from `data` (read as `doc`), or `error` raised with every problem found."""
    at = At(doc)
    obj = build_at(cls, data, at)
    raise_problems(at.problems, error)
    if obj is _BAD:   # every failure records a problem; never hand a sentinel to the caller
        raise error(f"{doc.name}: invalid")
    return obj


# ----------------------------------------------------------------- rules shared by pipelines and suites
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "target_modules")  # LF lora_target, Swift target_modules


def training_rules(framework: str, config: Path, overrides: Mapping[str, Any], at_of: Callable[[str], At]) -> None:
    """Rules over one training's config file + the spec's overrides: max_steps >= logging_steps (else no loss is
    logged), and LoRA keys only when the method is LoRA (LF `finetuning_type`, Swift `tuner_type`, read from the
    config and the overrides with each framework's default, as sftpack.parity reads them). `at_of(key)` is the
    place where the spec sets that override."""
    from sftpack.frameworks import adapter

    merged = {**_config(config), **overrides}
    for name, tp in (("max_steps", int), ("logging_steps", float)):
        if name in overrides and not fits(tp, overrides[name]):
            at_of(name).error("wrong type", overrides[name], type_name(tp), typed=True)
            return
    steps, every = merged.get("max_steps"), merged.get("logging_steps")
    if (fits(int, steps) and fits(float, every) and 1 <= steps < every
            and {"max_steps", "logging_steps"} & set(overrides)):
        at_of("max_steps" if "max_steps" in overrides else "logging_steps").error(
            "max_steps is less than logging_steps: no loss would be logged",
            note=f"max_steps {steps}, logging_steps {every}", expected="max_steps >= logging_steps")
    try:
        method = adapter(framework).normalise(merged)["method"]
    except (KeyError, TypeError, ValueError):
        return   # a value the framework itself rejects; not a rule of the spec
    if method == "lora":
        return
    for name in sorted(set(overrides) & set(LORA_KEYS)):
        at_of(name).error(f"a LoRA key, but this training's method is {method!r}", overrides[name],
                          f"no LoRA keys without LoRA (the method: {config.name} + overrides)")


def _config(path: Path) -> dict[str, Any]:
    """A framework config file as a mapping (cached while the file is unchanged)."""
    return dict(_config_cached(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _config_cached(path: str, mtime_ns: int) -> dict[str, Any]:
    from sftpack import parity

    data = parity.load_yaml(Path(path))
    return data if isinstance(data, dict) else {}
