"""Load a SQuAD-format JSON file for lm-eval: the `custom_dataset` of the squad-local task.

lm-eval calls `load(**metadata)`; the file comes from `--metadata` (sftpack eval passes it for `--squad-file`):

    lm_eval --model hf --model_args pretrained=MODEL --include_path eval_tasks --tasks squad-local \
      --metadata '{"squad_file": "/data/squad/dev-v1.1.json"}'

The file is SQuAD v1.1's or v2.0's layout (the user brings it; nothing is downloaded):
`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text", ...}],
"is_impossible"?}]}]}]}`. Each question becomes one row {id, title, context, question, answers: [text, ...]}, in
the file's order and with the fields as the hub's squad_v2 builder reads them (title optional, nothing stripped).
Unanswerable v2 questions (`is_impossible: true`, or no answers) are skipped and counted in a log line: SQuAD v2's
no-answer scoring needs the log-likelihood of "unanswerable" that upstream `squadv2` also requests, which this
task does not. Errors name the file and the JSON line/column, or where in it a key is missing or wrong
(`data[0].paragraphs[2].qas[1]`: article 0, paragraph 2, question 1, counted from 0).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

METADATA_KEY = "squad_file"
SPLIT = "validation"
LOG = logging.getLogger("lm_eval.squad-local")   # under lm_eval's logger: lm_eval prints it


def squad_file(metadata: dict) -> Path:
    """The file named by `--metadata '{"squad_file": ...}'`, resolved against the current directory."""
    configured = metadata.get(METADATA_KEY)
    if not configured:
        raise FileNotFoundError(
            "squad-local needs a SQuAD-format JSON file (v1.1 or v2.0 layout): pass "
            f"--metadata '{{\"{METADATA_KEY}\": \"/path/to/dev-v1.1.json\"}}' to lm_eval, or --squad-file FILE "
            "to sftpack eval")
    path = Path(configured).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"squad-local: {METADATA_KEY}={configured} resolves to {path}, which is not a file "
                                "(relative paths are against the folder lm_eval runs in)")
    return path


def _field(record: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str):
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{path}: {where}: missing key '{key}'")
    value = record[key]
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{path}: {where}: '{key}' must be a {names}, got {type(value).__name__}")
    return value


def _answers(qa: dict, path: Path, where: str) -> list[str]:
    """The question's answer texts; [] for an unanswerable one (`is_impossible: true`, or no answers)."""
    if qa.get("is_impossible") is True:
        return []
    answers = _field(qa, "answers", list, path, where)
    return [_field(answer, "text", str, path, f"{where}.answers[{k}]") for k, answer in enumerate(answers)]


def read_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(rows of the answerable questions, how many unanswerable ones were skipped)."""
    try:
        squad = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno} column {err.colno}: not valid JSON: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    rows, skipped = [], 0
    for a, article in enumerate(_field(squad, "data", list, path, "the top level")):
        paragraphs = _field(article, "paragraphs", list, path, f"data[{a}]")
        title = _field(article, "title", str, path, f"data[{a}]") if "title" in article else ""
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, path, where)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, where)):
                at = f"{where}.qas[{q}]"
                row = {"id": str(_field(qa, "id", (str, int), path, at)), "title": title, "context": context,
                       "question": _field(qa, "question", str, path, at), "answers": _answers(qa, path, at)}
                if row["answers"]:
                    rows.append(row)
                else:
                    skipped += 1
    if not rows:
        raise ValueError(f"{path}: no answerable questions ({skipped} unanswerable skipped)")
    return rows, skipped


def load(**metadata):
    """DatasetDict {validation} of the answerable questions (lm-eval `custom_dataset`)."""
    import datasets

    path = squad_file(metadata)
    rows, skipped = read_rows(path)
    if skipped:
        LOG.warning("squad-local: %s: skipped %d unanswerable (SQuAD v2) question(s) of %d; scoring the %d "
                    "answerable ones", path, skipped, skipped + len(rows), len(rows))
    return datasets.DatasetDict({SPLIT: datasets.Dataset.from_list(rows)})
