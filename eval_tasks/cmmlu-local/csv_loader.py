"""Load one subject of a CMMLU (or MMLU) CSV folder for lm-eval: the `custom_dataset` of the cmmlu-local tasks.

lm-eval calls `load(**metadata, **dataset_kwargs)`; `subject` comes from the task's `dataset_kwargs`, the folder
from `--metadata` (sftpack eval passes it for `--cmmlu-dir`):

    lm_eval --model hf --model_args pretrained=MODEL --include_path eval_tasks \
      --tasks cmmlu-local-agronomy,cmmlu-local-anatomy --metadata '{"cmmlu_dir": "/data/cmmlu"}'

Folder layouts read (the user brings the CSVs; nothing is downloaded):
- CMMLU (haonan-li/CMMLU `data/`): `dev/<subject>.csv`, `test/<subject>.csv`, header `,Question,A,B,C,D,Answer`
  (the index column is optional);
- MMLU (hendrycks/test `data/`): `dev/<subject>_dev.csv`, `test/<subject>_test.csv`, no header, one
  `question,A,B,C,D,answer` per line.
Both become rows with CMMLU's column names (Question, A, B, C, D, Answer: a letter), which is what upstream's
`cmmlu` prompt template reads. Errors name the file, the line and what to pass instead.

eval_tasks/mmlu-local/mmlu_loader.py reads its CSVs through this module too (`read_subject` with its own
`Family`: metadata key `mmlu_dir`), then turns the rows into upstream `mmlu`'s (cais/mmlu) columns.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

COLUMNS = ("Question", "A", "B", "C", "D", "Answer")
LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "test")
METADATA_KEY = "cmmlu_dir"


class Family(NamedTuple):   # not a dataclass: lm-eval runs this file before it is in sys.modules
    """A task family reading such a CSV folder: its name and metadata key, as errors show them."""

    task: str                 # "cmmlu-local"
    key: str                  # the --metadata key naming the folder
    what: str                 # what the folder holds, in words
    sftpack_flag: str         # how `sftpack eval` passes it


CMMLU = Family("cmmlu-local", METADATA_KEY, "CMMLU/MMLU CSVs", "--cmmlu-dir")


def _csv_file(root: Path, split: str, subject: str, family: Family = CMMLU) -> Path:
    for name in (f"{subject}.csv", f"{subject}_{split}.csv"):
        path = root / split / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{family.task}: no {split} CSV for subject '{subject}': looked for {root / split / (subject + '.csv')} "
        f"and {root / split / (subject + '_' + split + '.csv')}"
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of one CMMLU or MMLU CSV file as {Question, A, B, C, D, Answer}."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        records = list(csv.reader(handle))
    start, offset = 0, 0
    if records and [cell.strip().lower() for cell in records[0][-6:]] == [c.lower() for c in COLUMNS]:
        start, offset = 1, len(records[0]) - 6  # header row; a leading index column is skipped
    rows = []
    for number, record in enumerate(records[start:], start=start + 1):
        if not record:
            continue
        # after a header: drop its index column; without one: 7 cells = index + the 6 columns
        cells = record[offset:] if start else record[1:] if len(record) == 7 else record
        if len(cells) != 6:
            raise ValueError(f"{path}: line {number}: expected 6 columns (question, A, B, C, D, answer), "
                             f"got {len(cells)}")
        row = dict(zip(COLUMNS, cells, strict=True))
        row["Answer"] = row["Answer"].strip().upper()
        if row["Answer"] not in LETTERS:
            raise ValueError(f"{path}: line {number}: answer must be one of {list(LETTERS)}, got {cells[-1]!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def data_dir(metadata: dict, family: Family = CMMLU) -> Path:
    """The CSV folder named by `--metadata '{"cmmlu_dir": ...}'` (`family.key`), resolved against the current
    directory."""
    configured = metadata.get(family.key)
    if not configured:
        example = family.task.removesuffix("-local")
        raise FileNotFoundError(
            f"{family.task} needs the folder of your {family.what} (with dev/ and test/): pass "
            f"--metadata '{{\"{family.key}\": \"/path/to/{example}\"}}' to lm_eval, or {family.sftpack_flag} to "
            "sftpack eval"
        )
    root = Path(configured).expanduser().resolve()
    if not (root / "test").is_dir():
        raise FileNotFoundError(f"{family.task}: {family.key}={configured} resolves to {root}, which has no test/ "
                                "folder; point it at the folder holding dev/ and test/")
    return root


def read_subject(subject: str, metadata: dict, family: Family = CMMLU) -> dict[str, list[dict[str, str]]]:
    """{split: rows} of one subject, for each of SPLITS, from the folder `metadata` names."""
    root = data_dir(metadata, family)
    return {split: read_rows(_csv_file(root, split, subject, family)) for split in SPLITS}


def load(subject: str, **metadata):
    """DatasetDict {dev, test} of one subject (lm-eval `custom_dataset`)."""
    import datasets

    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(rows) for split, rows in read_subject(subject, metadata).items()
    })
