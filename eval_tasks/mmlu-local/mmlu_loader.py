"""Load one subject of an MMLU CSV folder for lm-eval: the `custom_dataset` of the mmlu-local tasks.

lm-eval calls `load(**metadata, **dataset_kwargs)`; `subject` comes from the task's `dataset_kwargs`, the folder
from `--metadata` (sftpack eval passes it for `--mmlu-dir`):

    lm_eval --model hf --model_args pretrained=MODEL --include_path eval_tasks \
      --tasks mmlu-local-anatomy,mmlu-local-virology --metadata '{"mmlu_dir": "/data/mmlu"}'

The folder is hendrycks/test's `data/` (the user brings it; nothing is downloaded): `dev/<subject>_dev.csv` and
`test/<subject>_test.csv`, no header, one `question,A,B,C,D,answer` per line (CMMLU's layout reads too). The CSVs
are read by eval_tasks/cmmlu-local/csv_loader.py (the same checks and error messages, naming the file and line);
this module only turns its rows into the columns of cais/mmlu, the hub dataset upstream's `mmlu` reads:
`question`, `subject`, `choices` (the four options) and `answer` (the index of the right one, 0-3).
It needs eval_tasks/cmmlu-local/ beside eval_tasks/mmlu-local/ (copy the whole eval_tasks/ folder).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

CSV_LOADER = Path(__file__).resolve().parent.parent / "cmmlu-local" / "csv_loader.py"
METADATA_KEY = "mmlu_dir"


@lru_cache(maxsize=1)
def csv_loader():
    """eval_tasks/cmmlu-local/csv_loader.py, imported by its path (lm-eval imports task modules by path too)."""
    if not CSV_LOADER.is_file():
        raise FileNotFoundError(f"mmlu-local reads its CSVs with {CSV_LOADER}, which is missing: keep "
                                "eval_tasks/cmmlu-local/ beside eval_tasks/mmlu-local/")
    name = "sftpack_eval_tasks_csv_loader"
    spec = importlib.util.spec_from_file_location(name, CSV_LOADER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def family():
    loader = csv_loader()
    return loader.Family("mmlu-local", METADATA_KEY, "MMLU CSVs", "--mmlu-dir")


def to_mmlu(row: dict[str, str], subject: str) -> dict:
    """One csv_loader row (Question, A, B, C, D, Answer letter) as a cais/mmlu row."""
    return {"question": row["Question"], "subject": subject, "choices": [row[c] for c in "ABCD"],
            "answer": "ABCD".index(row["Answer"])}


def load(subject: str, **metadata):
    """DatasetDict {dev, test} of one subject (lm-eval `custom_dataset`)."""
    import datasets

    splits = csv_loader().read_subject(subject, metadata, family())
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list([to_mmlu(row, subject) for row in rows]) for split, rows in splits.items()
    })
