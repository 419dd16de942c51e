"""GSM8K (openai/grade-school-math, `main` config): question + worked solution ending in `#### <number>`.

The written rows keep GSM8K's own field names, so one file serves LLaMA-Factory (alpaca columns
prompt=question, response=answer), ms-swift (registered from the same entry) and lm-eval's `gsm8k` task
(which reads `question` and `answer`).
"""

from __future__ import annotations

from typing import Any, Mapping, TypedDict

from sftpack.answer import ends_with_answer
from sftpack.converters.base import ConverterSpec, FieldError


class GsmRow(TypedDict):
    question: str
    answer: str


def _text(row: Mapping[str, Any], field: str) -> str:
    if field not in row or row[field] is None:
        raise FieldError(field, "missing")
    value = row[field]
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type(value).__name__} {value!r:.40}")
    if not value.strip():
        raise FieldError(field, "is empty")
    return value


def gsm8k_to_sft(row: Mapping[str, Any]) -> GsmRow:
    """One GSM8K row, validated: both fields strings, the answer's last line `#### <number>`."""
    if not isinstance(row, Mapping):
        raise FieldError("<row>", f"must be a JSON object, got {type(row).__name__}")
    question = _text(row, "question")
    answer = _text(row, "answer")
    if not ends_with_answer(answer):
        tail = answer.rstrip().rsplit("\n", 1)[-1]
        raise FieldError("answer", f"last line must be '#### <number>', got {tail!r:.60}")
    return GsmRow(question=question, answer=answer)


GSM8K = ConverterSpec(
    family="gsm8k",
    convert=gsm8k_to_sft,
    hub_subset="main",
    splits=("train", "test"),
    entry={"formatting": "alpaca", "columns": {"prompt": "question", "response": "answer"}},
    description="GSM8K main: grade-school math word problems with worked solutions",
    hub_ids=("openai/gsm8k", "modelscope/gsm8k"),
)
