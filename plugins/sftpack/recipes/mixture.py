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
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
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
    llamafactory: dict[str, str]
    swift: dict[str, list[str]]
    datasets: dict[str, dict[str, Any]]

    def commands(self) -> list[str]:
        lf = " ".join(f"{k}={v}" for k, v in self.llamafactory.items())
        return [f"llamafactory-cli train CONFIG.yaml {lf}",
                f"swift sft CONFIG.yaml --dataset {' '.join(self.swift['dataset'])}"]


def load_mixture(path: Path | str, var_overrides: dict[str, str] | None = None) -> schema.Mixture:
    path = Path(path)
    doc = schema.load_yaml(path)
    if set(doc.data) - {"mixture", "vars"}:
        raise schema.Where(path).error(f"a mixture file holds `mixture:` (and optional `vars:`), got "
                                       f"{sorted(doc.data)}")
    variables = schema.resolve_vars(doc, var_overrides or {})
    data = schema.substitute(doc.data["mixture"], variables, schema.Where(path, None, "mixture"), doc)
    return schema.build(schema.Mixture, data, doc.where(doc.data["mixture"], "mixture"))


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
                var_overrides: dict[str, str] | None = None, overwrite: bool = False) -> MixResult:
    """Write `<out>/<name>.mix.yaml` (through `sftpack.convert.commit`: a file of that name sftpack did not write
    is replaced only with `overwrite`)."""
    from sftpack import artifacts, convert

    mix = load_mixture(path, var_overrides)
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
    tmp = None
    try:
        with convert.interruptible(), convert._writing(out_dir):
            fd, tmp = artifacts.temp_file(result.file)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            output = convert.Output(result.file, tmp, dataset_info.file_sha256(tmp), f"mixture {mix.name}")
            for note in convert.commit(out_dir, [output], f"sftpack recipe {path}", overwrite=overwrite):
                print(f"sftpack: {note}", file=__import__("sys").stderr)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    for name, info in details.items():
        if info["swift_repeats"]:
            print(f"sftpack: warning: mixture {mix.name}: {name} has {info['rows']} rows, Swift will take "
                  f"{info['swift_samples']} (repeating rows)", file=__import__("sys").stderr)
    return result
