"""Mixtures: weights over dataset_info names -> the same mix for LLaMA-Factory and for ms-swift.

A mixture file holds one top-level key:

    mixture:
      name: math_en_zh
      datasets: {gsm8k_dedup: 3, en_zh_mix: 1}   # dataset_info names: relative weights
      total: 4000                                # rows for Swift's name#N (default: the most without repeats)
      strategy: interleave_under                 # LLaMA-Factory mix_strategy

`sftpack recipe MIX.yaml` writes `<out>/<name>.mix.yaml` with the LLaMA-Factory keys (`dataset`,
`mix_strategy`, `interleave_probs`) and the Swift `dataset: [name#N, ...]`, and prints both as command-line
overrides. The two frameworks mix differently: LLaMA-Factory draws each next row from dataset i with
probability p_i until the first dataset runs out (interleave_under, about min n_i/p_i rows) or all have
(interleave_over, about max n_i/p_i); Swift takes exactly N_i rows from each (a random subset; every row
repeated and then a random subset when N_i > n_i). Both files hold the expected row counts.

A fixed composition inside every batch (BiLLa-style) is `mode: per_batch`:

    mixture:
      name: math_zh_batches
      mode: per_batch
      batch: {gsm8k_math_quota: 6, cmmlu_mcq_train: 2}   # rows of each set in EVERY global batch; B = 8
      per_device_train_batch_size: 4                     # optional (default B): accumulation = B / (4 x world)
      seed: 0

It writes one JSON-lines dataset `<out>/<name>.jsonl` and its dataset_info entry `<name>` (the sources' entry,
which must be the same for all of them), ordered so that rows [k*B, (k+1)*B) hold exactly each set's quota, plus
`<name>.mix.yaml` with the framework keys that keep that order (`per_batch_keys`). Each set's rows are taken in a
seeded random order, every row at most once; places inside a block are shuffled with the same seed. The mix ends
with the first set that cannot fill another block (named in the report); no incomplete block is written.

Why these keys (read from the installed sources):
- LLaMA-Factory 0.9.5: `disable_shuffling: true` makes `CustomSeq2SeqTrainer._get_train_sampler`
  (llamafactory/train/sft/trainer.py) return a `SequentialSampler` instead of transformers 5's default
  (`train_sampling_strategy: random` -> RandomSampler, transformers/trainer.py `_get_train_sampler`).
  `streaming: false` (streaming shuffles with a buffer, llamafactory/data/data_utils.py `split_dataset`),
  `val_size: 0` (`train_test_split` shuffles), `packing`/`neat_packing: false` (packing regroups rows by
  length). One dataset, so no interleaving. Preprocessing (`dataset.map`, any `preprocessing_num_workers`)
  keeps the order; over-long rows are truncated, not dropped (without packing).
- ms-swift 4.5.3: `dataset_shuffle: false` (`load_dataset(..., shuffle=...)` shuffles the whole training set,
  swift/dataset/loader.py), `train_dataloader_shuffle: false` (`BatchSamplerShard`, swift/dataloader/shard.py,
  used by swift/trainers/mixin.py `get_train_dataloader`), `group_by_length: false` (it needs shuffling),
  `streaming: false`, `packing: false`, `split_dataset_ratio: 0`, `truncation_strategy: right` (the default
  `delete` drops long rows) and `strict: true` (else a row that fails to convert is dropped, or replaced by a
  random row in `LazyLLMDataset`, swift/dataset/utils.py; a dropped row shifts every later block).
- The batch rule: per_device_train_batch_size x gradient_accumulation_steps x world size = B. Both frameworks
  then feed one optimizer step exactly one block: without shuffling, accelerate's `BatchSamplerShard` (LF) gives
  process p the micro-batches p, p+W, ... of consecutive rows and Swift's gives it rows p, p+W, ...; either way
  the W processes x accumulation steps of one optimizer step cover rows [k*B, (k+1)*B). A micro-batch holds
  the quota only when accumulation and world size are 1. The mix is a whole number of blocks, so no window
  spans two epochs (each epoch repeats the same order). LF's `max_samples` takes the first rows: keep it a
  multiple of B, or leave it out.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftpack import dataset_info
from sftpack.errors import SftpackError
from sftpack.recipes import inputs as inp
from sftpack.recipes import schema
from sftpack.recipes.steps import _largest_remainder


@dataclass
class MixResult:
    mixture: schema.Mixture
    file: Path
    llamafactory: dict[str, Any]
    swift: dict[str, Any]
    datasets: dict[str, dict[str, Any]]
    per_batch: dict[str, Any] | None = None          # mode per_batch: the written dataset and its blocks
    notes: list[str] = field(default_factory=list)

    def commands(self) -> list[str]:
        lf = " ".join(f"{k}={_text(v)}" for k, v in self.llamafactory.items())
        swift = " ".join(f"--{k} {' '.join(map(_text, v)) if isinstance(v, list) else _text(v)}"
                         for k, v in self.swift.items())
        return [f"llamafactory-cli train CONFIG.yaml {lf}", f"swift sft CONFIG.yaml {swift}"]


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_mixture(path: Path | str, var_overrides: dict[str, str] | None = None) -> schema.Mixture:
    path = Path(path)
    doc = schema.load_yaml(path)
    if set(doc.data) - {"mixture", "vars"}:
        raise schema.Where(path).error(f"a mixture file holds `mixture:` (and optional `vars:`), got "
                                       f"{sorted(doc.data)}")
    variables = schema.resolve_vars(doc, var_overrides or {})
    data = schema.substitute(doc.data["mixture"], variables, schema.Where(path, None, "mixture"), doc)
    mix = schema.build(schema.Mixture, data, doc.where(doc.data["mixture"], "mixture"))
    mix._batch_where = schema.Where(path, doc.line(data.get("batch")) or mix._where.line, "mixture.batch")
    return mix


def dataset_rows(info_path: Path, name: str, entry: dict) -> int | None:
    """Rows in a file entry's JSON-lines file (None for hub entries and other formats)."""
    file_name = entry.get("file_name")
    if not file_name:
        return None
    path = info_path.parent / file_name
    if not path.is_file():
        raise SftpackError(f"{info_path}: entry '{name}': file {path.resolve()} not found; run its recipe first")
    if path.suffix not in (".jsonl", ".json") or (path.suffix == ".json" and not inp._json_lines(path)):
        return None
    return sum(1 for _ in inp.iter_lines(str(path), 0, path.stat().st_size))


def run_mixture(path: Path | str, out_dir: Path | str = "dataset_info",
                var_overrides: dict[str, str] | None = None, overwrite: bool = False,
                allow_overlap: bool = False) -> MixResult:
    """Write `<out>/<name>.mix.yaml` (and for `mode: per_batch` `<name>.jsonl` + its dataset_info entry) through
    `sftpack.convert.commit`: a file or entry of that name sftpack did not write is replaced only with
    `overwrite`; nothing is written unless everything checked out."""
    from sftpack import convert

    mix = load_mixture(path, var_overrides)
    if mix.mode == "per_batch":
        return run_per_batch(mix, path, Path(out_dir), overwrite, allow_overlap)
    out_dir = Path(out_dir)
    convert.check_out_dir(out_dir)
    info_path = out_dir / dataset_info.FILE_NAME
    entries = dataset_info.load(info_path)
    missing = [n for n in mix.datasets if n not in entries]
    if missing:
        raise mix._where.error(f"datasets {missing} are not in {info_path.resolve()}. Entries: {sorted(entries)}")
    weight_sum = sum(mix.datasets.values())
    probs = {n: w / weight_sum for n, w in mix.datasets.items()}
    rows = {n: dataset_rows(info_path, n, entries[n]) for n in mix.datasets}
    unknown = [n for n, r in rows.items() if r is None]
    if unknown and mix.total is None:
        raise mix._where.error(f"row counts of {unknown} are unknown (not JSON-lines files); set `total`")
    total = mix.total if mix.total is not None else math.floor(min(rows[n] / probs[n] for n in mix.datasets))
    counts = _largest_remainder(total, dict(mix.datasets))
    names = list(mix.datasets)
    text_probs = [f"{probs[n]:.10g}" for n in names]
    lf = {"dataset": ",".join(names), "mix_strategy": mix.strategy, "interleave_probs": ",".join(text_probs)}
    swift = {"dataset": [f"{n}#{counts[n]}" for n in names]}
    expected_lf = None
    if not unknown:
        per = [rows[n] / probs[n] for n in names]
        expected_lf = round(min(per) if mix.strategy == "interleave_under" else max(per))
    details = {n: {"rows": rows[n], "weight": mix.datasets[n], "probability": round(probs[n], 6),
                   "swift_samples": counts[n], "swift_repeats": bool(rows[n] is not None and counts[n] > rows[n])}
               for n in names}
    result = MixResult(mix, out_dir / f"{mix.name}.mix.yaml", lf, swift, details)
    header = [
        f"# Mixture '{mix.name}', written by `sftpack recipe {path}` from {info_path}; do not edit, rerun.",
        "# LLaMA-Factory: paste the `llamafactory` keys under ### dataset, or pass them as overrides:",
        f"#   {result.commands()[0]}",
        "# ms-swift: paste the `swift` key, or pass it as an override:",
        f"#   {result.commands()[1]}",
        f"# LLaMA-Factory draws row by row with these probabilities ({mix.strategy}: about "
        f"{expected_lf if expected_lf is not None else 'unknown'} rows);",
        f"# Swift takes exactly the counts after '#' ({total} rows; repeats rows when a count exceeds a dataset).",
    ]
    body = {"llamafactory": lf, "swift": swift,
            "expected_rows": {"llamafactory": expected_lf, "swift": total}, "datasets": details}
    text = "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=120)
    _commit(out_dir, [(result.file, text.encode("utf-8"), None, None)], mix, path, overwrite, False)
    for name, info in details.items():
        if info["swift_repeats"]:
            print(f"sftpack: warning: mixture {mix.name}: {name} has {info['rows']} rows, Swift will take "
                  f"{info['swift_samples']} (repeating rows)", file=sys.stderr)
    return result


def _commit(out_dir: Path, files: list[tuple[Path, Any, str | None, dict | None]], mix: schema.Mixture,
            path: Path | str, overwrite: bool, allow_overlap: bool) -> list[str]:
    """Write `files` ((final path, bytes or an iterable of byte chunks, entry name, entry)) to temp files beside
    their place and commit them as one output set `mixture <name>`; returns the notes (also printed)."""
    from sftpack import artifacts, convert

    temps: list[Path] = []
    try:
        with convert.interruptible():
            with convert._writing(out_dir):
                out_dir.mkdir(parents=True, exist_ok=True)
                outputs = []
                for final, chunks, name, entry in files:
                    fd, tmp = artifacts.temp_file(final)
                    temps.append(tmp)
                    with os.fdopen(fd, "wb") as handle:
                        for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                            handle.write(chunk)
                    outputs.append(convert.Output(final, tmp, dataset_info.file_sha256(tmp), f"mixture {mix.name}",
                                                  name, entry))
                notes = convert.commit(out_dir, outputs, f"sftpack recipe {path}", overwrite=overwrite,
                                       allow_overlap=allow_overlap)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    for note in notes:
        print(f"sftpack: {note}", file=sys.stderr)
    return notes


# ---------------------------------------------------------------------------------------------- per_batch

# dataset_info keys a per_batch source may have: a local JSON-lines file and how to read its rows
SOURCE_ENTRY_KEYS = ("file_name", "formatting", "columns", "tags")
PER_BATCH_FORMATTINGS = ("alpaca", "sharegpt")


@dataclass
class _Source:
    name: str
    path: Path
    entry: dict[str, Any]
    lines: list[bytes]


def _shape(entry: dict[str, Any]) -> dict[str, Any]:
    """What LLaMA-Factory reads a row with: formatting (default alpaca), columns, tags."""
    return {"formatting": entry.get("formatting", "alpaca"), "columns": entry.get("columns") or {},
            "tags": entry.get("tags") or {}}


def _batch_where(mix: schema.Mixture) -> schema.Where:
    """Where `batch:` is in the mixture file (its own line when `load_mixture` read it)."""
    return getattr(mix, "_batch_where", None) or mix._where.at("batch")


def _row_check(shape: dict[str, Any]):
    """A function (row) -> the problem with it, or None: the columns LLaMA-Factory needs are there."""
    columns = shape["columns"]
    if shape["formatting"] == "alpaca":
        needed = [columns.get("prompt", "instruction"), columns.get("response", "output")]

        def alpaca(row: Any) -> str | None:
            if not isinstance(row, dict):
                return "not a JSON object"
            missing = [k for k in needed if not isinstance(row.get(k), str)]
            return f"no text in {missing}" if missing else None
        return alpaca
    messages = columns.get("messages", "conversations")

    def sharegpt(row: Any) -> str | None:
        if not isinstance(row, dict):
            return "not a JSON object"
        turns = row.get(messages)
        return None if isinstance(turns, list) and turns else f"'{messages}' is not a non-empty list"
    return sharegpt


def _read_sources(mix: schema.Mixture, info_path: Path, entries: dict[str, Any]) -> list[_Source]:
    """Each `batch` set as rows, after every check that does not need the rows' order: names, entries, same
    formatting and columns, JSON-lines files, every row readable with the entry."""
    where = _batch_where(mix)
    missing = [n for n in mix.batch if n not in entries]
    if missing:
        raise where.error(f"datasets {missing} are not in {info_path.resolve()}. Entries: {sorted(entries)}")
    for name in mix.batch:
        entry = entries[name]
        if not isinstance(entry, dict) or not entry.get("file_name"):
            raise where.error(f"'{name}' is not a local file entry in {info_path.resolve()}; a per_batch mix reads "
                              "the rows of JSON-lines files")
        extra = sorted(set(entry) - set(SOURCE_ENTRY_KEYS))
        if extra:
            raise where.error(f"'{name}': entry keys {extra} are not supported in a per_batch mix (the mix picks the "
                              f"rows itself). Supported: {list(SOURCE_ENTRY_KEYS)}")
    shapes = {n: _shape(entries[n]) for n in mix.batch}
    if len({json.dumps(v, sort_keys=True) for v in shapes.values()}) > 1:
        shown = "; ".join(f"{n}: {v['formatting']}, columns {v['columns']}, tags {v['tags']}"
                          for n, v in shapes.items())
        raise where.error(f"the datasets must have the same formatting, columns and tags (one dataset_info entry "
                          f"serves the mix), got {shown}. Convert them to one layout first (a recipe's `format` step)")
    shape = next(iter(shapes.values()))
    if shape["formatting"] not in PER_BATCH_FORMATTINGS:
        raise where.error(f"formatting '{shape['formatting']}' of {list(mix.batch)}: a per_batch mix takes "
                          f"{list(PER_BATCH_FORMATTINGS)}")
    check = _row_check(shape)
    sources = []
    for name in mix.batch:
        path = info_path.parent / entries[name]["file_name"]
        if not path.is_file():
            raise where.error(f"'{name}': file {path.resolve()} not found; run its recipe first")
        if path.suffix not in (".jsonl", ".json") or (path.suffix == ".json" and not inp._json_lines(path)):
            raise where.error(f"'{name}': {path.resolve()} is not a JSON-lines file (.jsonl, or .json with one "
                              "object a line)")
        lines = []
        for number, raw in inp.iter_lines(str(path), 0, path.stat().st_size):
            try:
                problem = check(json.loads(raw))
            except ValueError as err:
                problem = f"not valid JSON ({err})"
            if problem:
                raise SftpackError(f"{path.resolve()} line {number}: {problem} (dataset '{name}', "
                                   f"{shape['formatting']} columns {shape['columns']}); nothing was written")
            lines.append(raw.rstrip(b"\r"))
        sources.append(_Source(name, path, entries[name], lines))
    return sources


def block_order(counts: dict[str, int], quotas: dict[str, int], seed: int) -> tuple[list[tuple[str, int]], int]:
    """The rows of a per_batch mix as (set, row index) in training order, and the number of blocks: each set's rows
    in a seeded random order, at most once; blocks of sum(quotas) rows, each holding quota[set] rows of every set,
    their places shuffled; as many blocks as the scarcest set fills (no incomplete block)."""
    blocks = min(counts[n] // q for n, q in quotas.items())
    rng = random.Random(seed)
    picks = {}
    for name, quota in quotas.items():
        order = list(range(counts[name]))
        rng.shuffle(order)
        picks[name] = iter(order[:blocks * quota])
    order: list[tuple[str, int]] = []
    for _ in range(blocks):
        slots = [name for name, quota in quotas.items() for _ in range(quota)]
        rng.shuffle(slots)
        order += [(name, next(picks[name])) for name in slots]
    return order, blocks


def per_batch_keys(mix: schema.Mixture) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LLaMA-Factory keys, Swift keys) that train on `mix.name` in the written order with one block per optimizer
    step, for `mix.world_size` processes (see the module docstring for where each comes from)."""
    batch = {"per_device_train_batch_size": mix.micro_batch, "gradient_accumulation_steps": mix.accumulation}
    lf = {"dataset": mix.name, "disable_shuffling": True, "streaming": False, "val_size": 0.0, "packing": False,
          "neat_packing": False, **batch}
    swift = {"dataset": [mix.name], "dataset_shuffle": False, "train_dataloader_shuffle": False,
             "group_by_length": False, "streaming": False, "packing": False, "split_dataset_ratio": 0.0,
             "truncation_strategy": "right", "strict": True, **batch}
    return lf, swift


def run_per_batch(mix: schema.Mixture, path: Path | str, out_dir: Path, overwrite: bool = False,
                  allow_overlap: bool = False) -> MixResult:
    """`mode: per_batch`: validate everything, then write `<name>.jsonl`, its entry and `<name>.mix.yaml`."""
    from sftpack import convert

    convert.check_out_dir(out_dir)
    info_path = out_dir / dataset_info.FILE_NAME
    entries = dataset_info.load(info_path)
    if mix.name in mix.batch:
        raise mix._where.at("name").error(f"'{mix.name}' is also one of the mixed datasets; give the mix its own "
                                          "name")
    sources = _read_sources(mix, info_path, entries)
    counts = {s.name: len(s.lines) for s in sources}
    short = {n: f"{counts[n]} rows < quota {q}" for n, q in mix.batch.items() if counts[n] < q}
    if short:
        raise _batch_where(mix).error(f"not enough rows for one block of {mix.batch_size}: {short}")
    final = out_dir / f"{mix.name}.jsonl"
    mix_file = out_dir / f"{mix.name}.mix.yaml"
    entry = {"file_name": final.name, **{k: v for k, v in sources[0].entry.items() if k != "file_name"}}
    dataset_info.validate_entry(mix.name, entry, where=str(info_path))
    convert.precheck(out_dir, {mix.name: entry}, overwrite)
    convert.refuse_own_inputs([s.path for s in sources], [final, mix_file], f"{path}'s output")

    order, blocks = block_order(counts, dict(mix.batch), mix.seed)
    used = {n: blocks * q for n, q in mix.batch.items()}
    ended_by = [n for n, q in mix.batch.items() if counts[n] - used[n] < q]
    details = {n: {"rows": counts[n], "quota": q, "used": used[n], "left": counts[n] - used[n]}
               for n, q in mix.batch.items()}
    report = {"dataset": mix.name, "file": final.name, "rows": len(order), "global_batch_size": mix.batch_size,
              "blocks": blocks, "quotas": dict(mix.batch), "seed": mix.seed, "ended_by": ended_by,
              "world_size": mix.world_size,
              "batch_rule": "per_device_train_batch_size x gradient_accumulation_steps x world size = "
                            f"{mix.batch_size}"}
    lf, swift = per_batch_keys(mix)
    result = MixResult(mix, mix_file, lf, swift, details, report)
    lines = {s.name: s.lines for s in sources}

    def rows():
        chunk = []
        for name, index in order:
            chunk.append(lines[name][index] + b"\n")
            if len(chunk) >= 4096:
                yield b"".join(chunk)
                chunk = []
        yield b"".join(chunk)

    leftover = ", ".join(f"{n} {d['used']:,} of {d['rows']:,} ({d['left']:,} left)" for n, d in details.items())
    summary = (f"mixture {mix.name}: {blocks:,} blocks of {mix.batch_size} ({len(order):,} rows, each block "
               f"{', '.join(f'{q} {n}' for n, q in mix.batch.items())}); {' and '.join(ended_by)} ran out "
               f"(fewer rows left than the quota); rows used: {leftover}")
    header = [
        f"# Per-batch mixture '{mix.name}', written by `sftpack recipe {path}` from {info_path}; do not edit, rerun.",
        f"# {final.name} (dataset_info entry '{mix.name}'): every block of {mix.batch_size} consecutive rows holds "
        f"{', '.join(f'{q} {n}' for n, q in mix.batch.items())}.",
        "# Train on it in that order: paste the keys of your framework, or pass them as overrides:",
        f"#   {result.commands()[0]}",
        f"#   {result.commands()[1]}",
        f"# Batch rule: per_device_train_batch_size x gradient_accumulation_steps x world size = {mix.batch_size} "
        f"(written for {mix.world_size} process{'es' if mix.world_size > 1 else ''}); then every optimizer step "
        "is one block.",
        "# Never with packing, streaming, a validation split from the training set, or a sampler that shuffles.",
    ]
    body = {"llamafactory": lf, "swift": swift, "per_batch": report, "datasets": details}
    text = "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=120)
    result.notes = _commit(out_dir, [(final, rows(), mix.name, entry), (mix_file, text.encode("utf-8"), None, None)],
                           mix, path, overwrite, allow_overlap)
    print(f"sftpack: {summary}", file=sys.stderr)
    return result
