"""The one GSM8K answer parser, used by data validation, eval post-processing and tests.

The regex is the one of openai/grade-school-math `grade_school_math/dataset.py#L8` @3101c7d
(`ANS_RE = re.compile(r"#### (\\-?[0-9\\.\\,]+)")`), which is also lm-eval's `gsm8k` strict-match filter.
"""

from __future__ import annotations

import re

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_answer(completion: str) -> str | None:
    """The final answer after `#### `, with thousands separators removed; None when there is none.

    >>> extract_answer("48/2 = 24\\n#### 1,072")
    '1072'
    """
    match = ANSWER_RE.search(completion)
    if match is None:
        return None
    return match.group(1).strip().replace(",", "")


def ends_with_answer(answer: str) -> bool:
    """True when the last line of a GSM8K reference solution is `#### <number>`."""
    last = answer.rstrip().rsplit("\n", 1)[-1]
    return ANSWER_RE.fullmatch(last.strip()) is not None
