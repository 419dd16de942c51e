"""Load a recipe into a checked plan, run it, and write its outputs, dataset_info entries and stats.

Nothing under the output folder changes unless the whole recipe ran: rows go to temp files beside their
final names, and only after the last step are they, with the stats files (`<name>.stats.json` and `.stats.md`),
committed by `sftpack.convert.commit` (the one commit `sftpack prepare` uses): renamed into place and their
entries merged into `dataset_info.json` under the folder's lock, keeping every other entry; an entry or file
sftpack did not write is never replaced without `--overwrite`; what an earlier run of the same output wrote
and this one does not (`_valid`/`_test` after the split step is gone) is removed; a training output that
shares prompts with an eval set is refused without `--allow-overlap`. A recipe whose output would be one of its
own inputs is refused before any work. Swift sees the outputs under the same names through
`plugins/sftpack_swift_datasets.py`, which registers every dataset_info entry.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sftpack import artifacts, convert, dataset_info
from sftpack.errors import SftpackError
from sftpack.recipes import engine, schema
from sftpack.recipes import inputs as inp
from sftpack.recipes import stats as statslib
from sftpack.recipes.registry import STEPS, Step
from sftpack.recipes.steps import SPLIT_TAG, Format

SPLIT_ORDER = ("train", "valid", "test")
HEAVY_CHUNK_BYTES = 1 << 20   # chunk size when a step costs far more than reading (tokens, MinHash)


@dataclass
class Plan:
    path: Path
    seed: int
    description: str
    vars: dict[str, str]
    inputs: list[schema.InputSpec]
    steps: list[Step]
    output: schema.OutputSpec
    entry: dict[str, Any]
    stats_tokenizer: str | None
    tag_names: list[str]
    sha256: str

    @property
    def splits(self) -> bool:
        return SPLIT_TAG in self.tag_names

    def dataset_names(self) -> list[str]:
        if self.splits:
            return [f"{self.output.name}_{s}" for s in SPLIT_ORDER]
        return [self.output.name]


def is_mixture(doc: schema.Doc) -> bool:
    return "mixture" in doc.data


def load_recipe(path: Path | str, var_overrides: dict[str, str] | None = None) -> Plan:
    """Read and check a recipe file; every error names the file, line and key."""
    import hashlib

    path = Path(path)
    doc = schema.load_yaml(path)
    if is_mixture(doc):
        raise SftpackError(f"{path}: is a mixture file (top-level `mixture:`), not a recipe")
    variables = schema.resolve_vars(doc, var_overrides or {})
    top = schema.Where(path)
    data = {k: (v if k == "vars" else schema.substitute(v, variables, top.at(str(k), doc.line(doc.data)), doc))
            for k, v in doc.data.items()}
    recipe = schema.build(schema.Recipe, data, top)

    if not isinstance(recipe.inputs, list) or not recipe.inputs:
        raise top.at("inputs", doc.line(doc.data)).error("needs at least one input")
    specs = []
    for i, item in enumerate(recipe.inputs):
        specs.append(schema.build(schema.InputSpec, item, doc.where(item, f"inputs[{i}]")))
    names = [s.name for s in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise top.at("inputs").error(f"input names must be unique, repeated: {duplicated}")

    steps: list[Step] = []
    tags: list[str] = []
    for i, item in enumerate(recipe.steps, start=1):
        where = doc.where(item, f"steps[{i}]")
        if not isinstance(item, dict) or len(item) != 1:
            raise where.error(f"each step is a mapping with one key, the step name, e.g. `- exact_dedup: "
                              f"{{fields: [question]}}`; got {item!r:.80}. Steps: {sorted(STEPS)}")
        (name, params), = item.items()
        if name not in STEPS:
            raise where.error(f"unknown step {name!r}. Steps: {sorted(STEPS)}")
        step = schema.build(STEPS[name], params, schema.Where(path, doc.line(params) or where.line,
                                                              f"steps[{i}] ({name})"))
        step._index = i
        own_seed = getattr(step, "seed", None)
        step._seed = own_seed if isinstance(own_seed, int) else recipe.seed
        step._tags = frozenset(tags)
        unknown_inputs = sorted(set(step.inputs or []) - set(names))
        if unknown_inputs:
            raise step.error(f"inputs {unknown_inputs} are not recipe inputs. Inputs: {names}")
        steps.append(step)
        for tag in step.creates_tags():
            if tag not in tags:
                tags.append(tag)
    output = schema.build(schema.OutputSpec, recipe.output, doc.where(recipe.output, "output"))
    plan_stub = type("PlanStub", (), {"inputs": specs, "steps": steps})()
    for step in steps:
        step.check(plan_stub)

    entry = _entry(steps, output, names)
    for dataset in ([f"{output.name}_{s}" for s in SPLIT_ORDER] if SPLIT_TAG in tags else [output.name]):
        schema.validate_dataset_entry(dataset, entry, output._where)
    stats_spec = schema.build(schema.StatsSpec, recipe.stats, doc.where(recipe.stats, "stats"))
    return Plan(path=path, seed=recipe.seed, description=recipe.description, vars=variables, inputs=specs,
                steps=steps, output=output, entry=entry, stats_tokenizer=stats_spec.tokenizer, tag_names=tags,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def _entry(steps: list[Step], output: schema.OutputSpec, input_names: list[str]) -> dict[str, Any]:
    formats = [s for s in steps if isinstance(s, Format)]
    given = output.entry()
    if not formats:
        if given is None:
            raise output._where.error("without a `format` step, give the rows' dataset_info `columns` (and "
                                      "`formatting` / `tags` if not alpaca), e.g. columns: {prompt: question, "
                                      "response: answer}")
        return given
    if given is not None:
        raise output._where.error(f"a `format` step ({formats[0].label()}) sets the dataset_info entry; remove "
                                  "formatting/columns/tags here")
    entries = {s.label(): s.entry() for s in formats}
    if len({repr(e) for e in entries.values()}) > 1:
        raise formats[1].error(f"every format step must write the same layout; got {entries}")
    covered = set()
    for step in formats:
        covered |= set(step.inputs or input_names)
    missing = [n for n in input_names if n not in covered]
    if missing:
        raise formats[0].error(f"rows of inputs {missing} pass no format step; add one for them")
    return formats[0].entry()


# ---------------------------------------------------------------------------------------------- running


class Run:
    """The runtime view of a plan: resolved files, chunk tasks, options; read by workers after fork."""

    def __init__(self, plan: Plan, workdir: Path | None, workers: int, progress: bool, min_parallel_bytes: int,
                 chunk_bytes: int):
        self.plan, self.workdir, self.workers, self.progress = plan, workdir, workers, progress
        if any(step.heavy() for step in plan.steps):
            chunk_bytes = min(chunk_bytes, HEAVY_CHUNK_BYTES)
            min_parallel_bytes = min(min_parallel_bytes, HEAVY_CHUNK_BYTES)
        self.min_parallel_bytes = min_parallel_bytes
        self.seed = plan.seed
        self.inputs = plan.inputs
        self.input_names = [s.name for s in plan.inputs]
        self.files: list[inp.FileRef] = []
        for index, spec in enumerate(plan.inputs):
            self.files += inp.resolve_files(index, spec, spec._where)
        self.file_input = [f.input for f in self.files]
        self.file_input_array = np.array(self.file_input, dtype=np.int32)
        self.input_maps = [_input_map(spec) for spec in plan.inputs]
        self.source_tasks: list[inp.Task] = []
        for i, ref in enumerate(self.files):
            if inp.is_jsonl(ref):
                self.source_tasks += inp.chunk_tasks(i, ref, chunk_bytes)
            else:
                self.source_tasks.append(inp.Task("hub" if ref.hub else "source", i, ref.path))
        self.pass_seconds: list[float] = []
        self.rows_read = 0

    def origin(self, ann: engine.Annotations, row: int) -> str:
        ref = self.files[int(ann.file[row])]
        return f"{ref.path}: {ref.unit} {int(ann.number[row])}"


def _input_map(spec: schema.InputSpec) -> Callable | None:
    convert = None
    if spec.converter:
        from sftpack.converters import CONVERTERS

        convert = CONVERTERS[spec.converter].convert
    file_field = spec.file_field
    if convert is None and file_field is None:
        return None

    def prepare(row: dict, ref: inp.FileRef) -> dict:
        if convert is not None:
            row = dict(convert(row))
        if file_field is not None:
            row = dict(row)
            row[file_field] = ref.stem
        return row

    return prepare


@dataclass
class OutputInfo:
    dataset: str
    file: Path
    rows: int
    sha256: str
    tags: dict[str, dict[str, int]] = field(default_factory=dict)
    tokens: dict | None = None


@dataclass
class RecipeResult:
    plan: Plan
    outputs: list[OutputInfo]
    steps: list[engine.StepStats]
    stats: dict
    stats_json: Path
    stats_md: Path


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def run_recipe(path: Path | str, out_dir: Path | str = "dataset_info", var_overrides: dict[str, str] | None = None,
               workers: int | None = None, progress: bool = True,
               min_parallel_bytes: int = engine.MIN_PARALLEL_BYTES,
               chunk_bytes: int = inp.CHUNK_BYTES, overwrite: bool = False,
               allow_overlap: bool = False) -> RecipeResult:
    """Run one recipe into `out_dir` (see module docstring); returns what was written."""
    started = time.perf_counter()
    plan = load_recipe(path, var_overrides)
    out_dir = Path(out_dir)
    info_path = out_dir / dataset_info.FILE_NAME
    convert.check_out_dir(out_dir)
    dataset_info.load(info_path)  # a malformed dataset_info.json stops us before any work
    names = plan.dataset_names()
    convert.precheck(out_dir, {n: {"file_name": f"{n}.jsonl", **plan.entry} for n in names}, overwrite)
    run = Run(plan, None, workers or default_workers(), progress, min_parallel_bytes, chunk_bytes)
    stats_json = out_dir / f"{plan.output.name}.stats.json"
    stats_md = out_dir / f"{plan.output.name}.stats.md"
    targets = [out_dir / f"{n}.jsonl" for n in names] + [stats_json, stats_md]
    convert.refuse_own_inputs([Path(f.path) for f in run.files if not f.hub], targets, f"{plan.path}'s output")
    _refuse_reading_own_output(plan, targets)
    _load_tokenizers(plan)
    for note in artifacts.clean_stale_temps(out_dir):
        print(f"sftpack: {note}", file=sys.stderr)
    created = not out_dir.exists()
    with convert._writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        workdir = run.workdir = artifacts.temp_dir(out_dir, "recipe")
    writers: list[engine.OutputWriter] = []
    temps: list[Path] = []
    try:
        with convert.interruptible():
            with convert._writing(out_dir):
                step_stats = {s._index: engine.StepStats(s._index, s.NAME, s.KIND) for s in plan.steps}
                carried: list[str] = []
                previous = None
                for pass_no, segment in enumerate(engine.segments(plan.steps)):
                    names_now = carried + [t for s in segment.maps for t in s.creates_tags() if t not in carried]
                    previous = engine.run_pass(run, pass_no, segment, previous, list(dict.fromkeys(names_now)),
                                               step_stats)
                    carried = list(previous.ann.tags)
                final = previous
                assert final is not None

                routes = list(SPLIT_ORDER) if plan.splits else [""]
                writers = [engine.OutputWriter(out_dir / f"{name}.jsonl") for name in names]
                tokens = _TokenStats(plan, len(writers)) if plan.stats_tokenizer else None
                route_of = _route_array(final, routes) if plan.splits else None
                on_row = None
                if tokens is not None:
                    def on_row(g: int, raw: bytes) -> None:
                        tokens.add(0 if route_of is None else int(route_of[g]), raw)
                engine.emit(run, final, routes, writers, on_row)
                for writer in writers:
                    writer.close()

                by = f"recipe {plan.output.name}"
                infos, outputs = [], []
                for index, (name, writer) in enumerate(zip(names, writers, strict=True)):
                    if writer.rows == 0:
                        print(f"sftpack: warning: {name}: no rows, not written", file=sys.stderr)
                        continue
                    infos.append(OutputInfo(name, writer.final, writer.rows, writer.sha.hexdigest(),
                                            tags=_tag_counts(final, route_of, index),
                                            tokens=tokens.summary(index) if tokens else None))
                    entry = {"file_name": writer.final.name, **plan.entry}
                    dataset_info.validate_entry(name, entry, where=str(info_path))
                    outputs.append(convert.Output(writer.final, writer.tmp, writer.sha.hexdigest(), by, name, entry,
                                                  rows=writer.rows))
                if not outputs:
                    raise SftpackError(f"{plan.path}: no rows left after the steps; nothing written")

                steps = [step_stats[s._index] for s in plan.steps]
                stats = statslib.build(plan, run, infos, steps, time.perf_counter() - started, info_path)
                for final_path, text in ((stats_json, statslib.to_json(stats)),
                                         (stats_md, statslib.to_markdown(stats))):
                    fd, tmp = artifacts.temp_file(final_path)
                    temps.append(tmp)
                    with os.fdopen(fd, "w", encoding="utf-8") as handle:
                        handle.write(text)
                    outputs.append(convert.Output(final_path, tmp, dataset_info.file_sha256(tmp), by))
            # OS errors in the commit name what they hit (some files may be in place already): not wrapped
            notes = convert.commit(out_dir, outputs, f"sftpack recipe {plan.path}", overwrite=overwrite,
                                   allow_overlap=allow_overlap)
    finally:
        for writer in writers:
            writer.discard()
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
    for note in notes:
        print(f"sftpack: {note}", file=sys.stderr)
    return RecipeResult(plan, infos, steps, stats, stats_json, stats_md)


def _refuse_reading_own_output(plan: Plan, targets: list[Path]) -> None:
    """An output inside an input folder that the input would read next time (its glob or split pattern) is
    refused: the recipe would read its own earlier output."""
    for spec in plan.inputs:
        folder = Path(spec.path).expanduser()
        if not folder.is_dir():
            continue
        for target in targets:
            if not target.resolve().is_relative_to(folder.resolve()):
                continue
            relative = target.resolve().relative_to(folder.resolve()).as_posix()
            split = spec.split
            reads = (fnmatch.fnmatch(relative, spec.glob) if spec.glob else
                     target.name.startswith((f"{split}.", f"{split}-")) or target.name.endswith(f"-{split}.arrow"))
            if reads:
                raise spec._where.error(f"the output {target} would be read as this input next time (it is in "
                                        f"{folder.resolve()} and matches {spec.glob or spec.split!r}); nothing was "
                                        "changed. Write to another --out, or narrow the input's glob")


def _load_tokenizers(plan: Plan) -> None:
    """Every tokenizer the recipe uses, loaded before any work: a missing one fails now, not after the passes."""
    from sftpack.recipes import text as textlib

    names = {s.uses_tokenizer() for s in plan.steps if s.uses_tokenizer()} | {plan.stats_tokenizer}
    for name in sorted(n for n in names if n):
        textlib.load_tokenizer(name)


def _route_array(final: engine.PassOutput, routes: list[str]) -> np.ndarray:
    tag = final.ann.tags[SPLIT_TAG]
    lookup = np.array([routes.index(str(v)) if str(v) in routes else -1 for v in tag.vocab], dtype=np.int64)
    return lookup[tag.codes]


def _tag_counts(final: engine.PassOutput, route_of: np.ndarray | None, index: int) -> dict[str, dict[str, int]]:
    keep = final.mask if route_of is None else final.mask & (route_of == index)
    out = {}
    for name, tag in final.ann.tags.items():
        if name == SPLIT_TAG:
            continue
        counts = np.bincount(tag.codes[keep], minlength=len(tag.vocab))
        values = {"(none)" if tag.vocab[c] is None else str(tag.vocab[c]): int(n) for c, n in enumerate(counts) if n}
        out[name] = dict(sorted(values.items()))
    return out


class _TokenStats:
    """Token lengths of the written rows: the text of the entry's columns (all messages for sharegpt)."""

    def __init__(self, plan: Plan, outputs: int):
        from sftpack.recipes import text as textlib

        self.name = plan.stats_tokenizer
        self.tokenizer = textlib.load_tokenizer(plan.stats_tokenizer)
        self.entry = plan.entry
        self.counts: list[list[int]] = [[] for _ in range(outputs)]
        self.pending: list[tuple[int, str]] = []

    def texts(self, row: dict) -> str:
        entry = self.entry
        columns = entry.get("columns") or {}
        if entry.get("formatting", "alpaca") == "alpaca":
            names = [columns.get(k, d) for k, d in (("system", None), ("prompt", "instruction"),
                                                    ("query", "input"), ("response", "output"))]
            return "\n".join(str(row[n]) for n in names if n and row.get(n))
        tags = entry.get("tags") or {}
        content = tags.get("content_tag", "value")
        messages = row.get(columns.get("messages", "conversations")) or []
        parts = [str(m.get(content, "")) for m in messages]
        if columns.get("system") and row.get(columns["system"]):
            parts.insert(0, str(row[columns["system"]]))
        return "\n".join(parts)

    def add(self, output: int, raw: bytes) -> None:
        from sftpack.recipes.engine import _loads

        self.pending.append((output, self.texts(_loads(raw)[0])))
        if len(self.pending) >= 2048:
            self.flush()

    def flush(self) -> None:
        from sftpack.recipes import text as textlib

        if self.pending:
            counts = textlib.count_tokens(self.tokenizer, [t for _, t in self.pending])
            for (output, _), n in zip(self.pending, counts, strict=True):
                self.counts[output].append(n)
            self.pending = []

    def summary(self, output: int) -> dict | None:
        self.flush()
        values = np.array(self.counts[output], dtype=np.int64)
        if not len(values):
            return None
        return {"tokenizer": self.name, "rows": int(len(values)), "total": int(values.sum()),
                "min": int(values.min()), "mean": round(float(values.mean()), 1),
                "p50": int(np.percentile(values, 50)), "p90": int(np.percentile(values, 90)),
                "p99": int(np.percentile(values, 99)), "max": int(values.max())}
