"""Per-document metrics of the tasks `sftpack eval --dataset` generates (and of `squad-local`), for lm-eval's
`process_results`: a generated task's YAML names `process_results` in a two-line module beside it that imports
this one, so `lm_eval` re-runs the task by hand wherever sftpack is installed.

Free text (a reference answer):
- `exact_match`: the generation equals the reference after SQuAD's normalisation (official SQuAD v1.1 evaluation
  script: lower case, punctuation and the articles a/an/the removed, whitespace collapsed);
- `f1`: SQuAD's token F1 on the same normalisation. Chinese/Japanese/Korean text is split into single characters
  (the "mixed segmentation" of the CMRC 2018 evaluation script): on whitespace alone a Chinese answer is one token;
- `rougeL`: ROUGE-L F-measure by Google's `rouge_score` (the package lm-eval itself depends on), with the same
  character split for CJK (its default tokenizer drops every non-ASCII character: Chinese would score 0).

Multiple choice (a reference that is an option letter, as `mcq_augment` writes: "B. text"):
- `acc`: the option letter read from the generation (`option_letter`) is the reference's;
- `exact_match`: as above, the whole answer line.

With several references (SQuAD's answers), each metric takes the best over them, as SQuAD's script does.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any, Iterable

FREE_TEXT = ("exact_match", "f1", "rougeL")
MULTIPLE_CHOICE = ("acc", "exact_match")

_CJK = re.compile(r"[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
                  r"\U00020000-\U0002fa1f]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize(text: str) -> str:
    """SQuAD v1.1's `normalize_answer` (lower, no punctuation, no articles, single spaces), with Unicode
    punctuation (，。？ ...) removed too."""
    text = "".join(ch for ch in str(text).lower() if not _is_punctuation(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def tokens(text: str) -> list[str]:
    """The normalised text's tokens: words, with every CJK character a token of its own."""
    out: list[str] = []
    for word in normalize(text).split():
        if not _CJK.search(word):
            out.append(word)
            continue
        piece = ""
        for char in word:
            if _CJK.match(char):
                if piece:
                    out.append(piece)
                    piece = ""
                out.append(char)
            else:
                piece += char
        if piece:
            out.append(piece)
    return out


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 (both empty: 1.0, as SQuAD v2's script scores a correct abstention)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class _Tokenizer:
    """rouge_score's tokenizer interface over `tokens` (its default keeps only [a-z0-9])."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    return _rouge().score(reference, prediction)["rougeL"].fmeasure


# --------------------------------------------------------------------------------------------- option letters

_LETTER_AT_START = re.compile(r"^\s*(?:[(\[]([A-Z])[)\]]|([A-Z])(?:[.．、:：]|\s*$))", re.MULTILINE)
_LETTER_SAID = re.compile(r"(?:right option is|correct option is|answer is|答案(?:是|为|：|:))\s*[(\[]?([A-Z])\b",
                          re.IGNORECASE)


def option_letter(text: str) -> str | None:
    """The option letter an answer gives: a letter opening it ("B", "B. text", "B、", "(B) text"; not "I think",
    "A cat"), else one named by "the right option is X" / "the answer is X" / "答案是X"; None when there is none."""
    text = str(text)
    found = _LETTER_AT_START.match(text)
    if found:
        return found.group(1) or found.group(2)
    said = _LETTER_SAID.search(text)
    return said.group(1).upper() if said else None


def option_letters(prompt: str) -> set[str]:
    """The letters of the option lines in a prompt ("A. ...", "B、...", "(C) ...", one per line)."""
    return set(re.findall(r"(?m)^\s*[(\[]?([A-Z])(?:[)\]]|[.．、:：])\s*\S", prompt))


def is_multiple_choice(pairs: Iterable[tuple[str, str]]) -> bool:
    """Whether every (prompt, reference) is an option question: the reference's letter is one of the prompt's
    option lines, and the prompt has at least two."""
    pairs = list(pairs)
    if not pairs:
        return False
    for prompt, reference in pairs:
        letters = option_letters(prompt)
        if len(letters) < 2 or option_letter(reference) not in letters:
            return False
    return True


# ------------------------------------------------------------------------------------------ lm-eval's hooks


def _best(metric, prediction: str, references: list[str]) -> float:
    return max(metric(prediction, reference) for reference in references)


def _references(doc: dict[str, Any]) -> list[str]:
    refs = doc.get("references") or [doc["target"]]
    return [str(ref) for ref in refs]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval `process_results` of a generated task: `doc` holds `target` (and `references`, all acceptable
    answers) and `gold` (the option letter, multiple choice only); `results[0]` is the generation."""
    prediction = results[0] if results else ""
    references = _references(doc)
    scores = {"exact_match": _best(exact_match, prediction, references)}
    if doc.get("gold"):
        scores["acc"] = float(option_letter(prediction) == doc["gold"])
        return scores
    scores["f1"] = _best(f1, prediction, references)
    scores["rougeL"] = _best(rouge_l, prediction, references)
    return scores


def process_results_squad(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """squad-local: exact match and F1 over the question's answers (an unanswerable question's answer is "")."""
    prediction = results[0] if results else ""
    references = [str(text) for text in doc["answers"]] or [""]
    return {"exact_match": _best(exact_match, prediction, references), "f1": _best(f1, prediction, references)}
