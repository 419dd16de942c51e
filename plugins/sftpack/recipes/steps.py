"""Every recipe step: its parameters (the YAML keys, with defaults) and what it does.

`sftpack recipe --steps` prints this list. Select steps keep the first occurrence / a seeded sample and
never reorder rows; map steps are pure functions of one row (plus a per-row RNG seeded by the recipe seed,
the step and the row's origin).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sftpack.converters import FieldError
from sftpack.errors import SftpackError
from sftpack.recipes import features as feat
from sftpack.recipes import text as textlib
from sftpack.recipes.registry import (
    MapStep,
    RowContext,
    SelectContext,
    SelectStep,
    Tag,
    register,
)

SPLIT_TAG = "split"     # a tag with this name routes rows to <output>_<value>
MAX_EXAMPLES = 20


def _check_normalize(ops: list[str]) -> tuple[str, ...]:
    unknown = [op for op in ops if op not in textlib.NORMALIZERS]
    if unknown:
        raise FieldError("normalize", f"unknown {unknown}. Expected: {list(textlib.NORMALIZERS)}")
    return tuple(ops)


def _need_fields(fields: list[str] | None, step: str) -> None:
    if not fields:
        raise ValueError(f"{step}: 'fields' must name at least one field")


def _largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Integer shares of `total` proportional to `weights`, summing exactly to `total` (ties: listed order)."""
    norm = sum(weights.values())
    raw = {k: total * w / norm for k, w in weights.items()}
    shares = {k: int(v) for k, v in raw.items()}
    left = total - sum(shares.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - shares[k]), list(weights).index(k)))[:left]:
        shares[k] += 1
    return shares


def _choose_count(rng: np.random.Generator, index: np.ndarray, count: int) -> np.ndarray:
    if count >= len(index):
        return index
    return np.sort(index[rng.choice(len(index), size=count, replace=False)])


def _choose_tokens(rng: np.random.Generator, index: np.ndarray, tokens: np.ndarray, budget: int) -> np.ndarray:
    """A seeded random order of `index`, cut where the running token total would pass `budget`."""
    order = index[rng.permutation(len(index))]
    take = int(np.searchsorted(np.cumsum(tokens[order]), budget, side="right"))
    return np.sort(order[:take])


def _pairs(mapping: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in mapping.items())


# ---------------------------------------------------------------------------------------------- dedup


@register("exact_dedup")
@dataclass(kw_only=True)
class ExactDedup(SelectStep):
    """Drop rows whose normalised `fields` equal an earlier row's (the first occurrence stays).
    `any_order`: some of the fields compared as a set (MCQ options A-D in any order are the same question).
    Keeps one 64-bit hash per row, never the text."""

    fields: list[str]
    normalize: list[str] = field(default_factory=lambda: list(textlib.DEFAULT_NORMALIZE))
    any_order: list[str] = field(default_factory=list)

    def __post_init__(self):
        _need_fields(self.fields, self.NAME)
        self._ops = _check_normalize(self.normalize)
        extra = [f for f in self.any_order if f not in self.fields]
        if extra:
            raise ValueError(f"any_order {extra} must be among fields {self.fields}")

    def collectors(self):
        return {"hash": feat.HashCollector(self.fields, self._ops, self._tags, tuple(self.any_order))}

    def select(self, ctx: SelectContext) -> None:
        index = np.flatnonzero(ctx.active)
        hashes = ctx.features["hash"][index]
        _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        keep = np.zeros(len(index), dtype=bool)
        keep[first] = True
        ctx.mask[index[~keep]] = False
        ctx.details.update(duplicates_removed=int(len(index) - len(first)), distinct=int(len(first)))
        if len(counts):
            top = int(np.argmax(counts))
            ctx.details.update(max_copies=int(counts[top]), max_copies_first_row=ctx.origin(index[first[top]]))


@register("near_dedup")
@dataclass(kw_only=True)
class NearDedup(SelectStep):
    """Drop rows whose n-gram set is near an earlier kept row's: MinHash-LSH (datasketch) finds candidates,
    the estimated Jaccard similarity of the signatures confirms (>= threshold). Holds num_perm x 4 bytes
    per row in memory."""

    fields: list[str]
    threshold: float = 0.8
    ngram: int = 5
    unit: Literal["char", "word"] = "char"
    num_perm: int = 128
    normalize: list[str] = field(default_factory=lambda: list(textlib.DEFAULT_NORMALIZE))
    minhash_seed: int = 1

    def __post_init__(self):
        _need_fields(self.fields, self.NAME)
        self._ops = _check_normalize(self.normalize)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1 or self.num_perm < 16:
            raise ValueError(f"ngram must be >= 1 and num_perm >= 16, got {self.ngram}, {self.num_perm}")

    def heavy(self):
        return True

    def collectors(self):
        return {"minhash": feat.MinHashCollector(self.fields, self._ops, self.ngram, self.unit, self.num_perm,
                                                 self.minhash_seed, self._tags)}

    def select(self, ctx: SelectContext) -> None:
        from datasketch import LeanMinHash, MinHashLSH

        index = np.flatnonzero(ctx.active)
        signatures = ctx.features["minhash"]
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        examples, removed = [], 0
        if ctx.progress and len(index) > 10_000:
            from tqdm import tqdm

            index = tqdm(index, desc=self.label(), unit=" rows", mininterval=0.5, leave=False)
        for row in index:
            signature = signatures[row]
            minhash = LeanMinHash(seed=self.minhash_seed, hashvalues=signature, scheme="affine32")
            best, best_j = None, 0.0
            for other in lsh.query(minhash):
                similarity = float(np.mean(signatures[other] == signature))
                if similarity >= self.threshold and similarity > best_j:
                    best, best_j = other, similarity
            if best is None:
                lsh.insert(int(row), minhash, check_duplication=False)
                continue
            ctx.mask[row] = False
            removed += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"removed": ctx.origin(row), "kept": ctx.origin(best), "jaccard": round(best_j, 3)})
        ctx.details.update(near_duplicates_removed=removed, examples=examples)


# ---------------------------------------------------------------------------------------------- filters


@register("filter_length")
@dataclass(kw_only=True)
class FilterLength(SelectStep):
    """Keep rows whose `fields` hold min_chars..max_chars characters in total (either bound may be left out)."""

    fields: list[str]
    min_chars: int | None = None
    max_chars: int | None = None

    def __post_init__(self):
        _need_fields(self.fields, self.NAME)
        if self.min_chars is None and self.max_chars is None:
            raise ValueError("give min_chars, max_chars or both")

    def collectors(self):
        return {"length": feat.LengthCollector(self.fields, self._tags)}

    def select(self, ctx):
        _bounds(ctx, ctx.features["length"], self.min_chars, self.max_chars, "chars")


@register("filter_tokens")
@dataclass(kw_only=True)
class FilterTokens(SelectStep):
    """Keep rows whose `fields` hold min_tokens..max_tokens tokens of `tokenizer` in total (each field
    encoded alone, no special tokens)."""

    fields: list[str]
    tokenizer: str
    min_tokens: int | None = None
    max_tokens: int | None = None

    def __post_init__(self):
        _need_fields(self.fields, self.NAME)
        if self.min_tokens is None and self.max_tokens is None:
            raise ValueError("give min_tokens, max_tokens or both")

    def uses_tokenizer(self):
        return self.tokenizer

    def heavy(self):
        return True

    def collectors(self):
        return {"tokens": feat.TokenCollector(self.fields, self.tokenizer, self._tags)}

    def select(self, ctx):
        _bounds(ctx, ctx.features["tokens"], self.min_tokens, self.max_tokens, "tokens")


def _bounds(ctx: SelectContext, values: np.ndarray, low: int | None, high: int | None, unit: str) -> None:
    index = np.flatnonzero(ctx.active)
    v = values[index]
    short = v < low if low is not None else np.zeros(len(v), bool)
    long = v > high if high is not None else np.zeros(len(v), bool)
    ctx.mask[index[short | long]] = False
    ctx.details.update({f"too_few_{unit}": int(short.sum()), f"too_many_{unit}": int(long.sum())})
    if len(v):
        ctx.details[unit] = {"min": int(v.min()), "mean": round(float(v.mean()), 1), "max": int(v.max())}


# ---------------------------------------------------------------------------------------------- tags


@register("tag_language")
@dataclass(kw_only=True)
class TagLanguage(MapStep):
    """Tag each row 'zh', 'en' or 'other' from its `fields`: zh when CJK ideographs are at least
    `zh_ratio` of the CJK + Latin letters."""

    MODIFIES_ROW = False
    fields: list[str]
    tag: str = "language"
    zh_ratio: float = 0.3

    def __post_init__(self):
        _need_fields(self.fields, self.NAME)

    def creates_tags(self):
        return (self.tag,)

    def apply(self, row, ctx: RowContext):
        text = "\n".join(feat.field_text(row, ctx.tags, f, self._tags) for f in self.fields)
        ctx.tags[self.tag] = textlib.guess_language(text, self.zh_ratio)
        return row


@dataclass(kw_only=True)
class CategoryRule:
    category: str
    pattern: str
    fields: list[str]
    ignore_case: bool = False
    _where: Any = None

    def __post_init__(self):
        try:
            self._re = re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)
        except re.error as err:
            raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {err}") from None


@register("tag_category")
@dataclass(kw_only=True)
class TagCategory(MapStep):
    """Tag each row with a category: the value of `field`, or the first of the ordered `rules` whose regex
    `pattern` is found in its `fields` (else `default`; with `default: null` a row no rule matches is an
    error)."""

    MODIFIES_ROW = False
    field: str | None = None
    rules: list[dict] | None = None
    default: str | None = "other"
    tag: str = "category"

    def __post_init__(self):
        from sftpack.recipes.schema import Where, build

        if (self.field is None) == (self.rules is None):
            raise ValueError("give exactly one of 'field' or 'rules'")
        self._rules: list[CategoryRule] = []
        for i, rule in enumerate(self.rules or []):
            try:
                self._rules.append(build(CategoryRule, rule, Where(Path("rules"), None, f"rules[{i}]")))
            except SftpackError as err:
                raise ValueError(str(err).removeprefix("rules: ")) from None

    def creates_tags(self):
        return (self.tag,)

    def apply(self, row, ctx: RowContext):
        if self.field is not None:
            ctx.tags[self.tag] = feat.field_text(row, ctx.tags, self.field, self._tags)
            return row
        for rule in self._rules:
            if any(rule._re.search(feat.field_text(row, ctx.tags, f, self._tags)) for f in rule.fields):
                ctx.tags[self.tag] = rule.category
                return row
        if self.default is None:
            raise FieldError(",".join(self._rules[0].fields), "no category rule matches and `default` is null")
        ctx.tags[self.tag] = self.default
        return row


# ---------------------------------------------------------------------------------------------- sampling


def _group_index(step, ctx: SelectContext, name: str, index: np.ndarray) -> tuple[Tag, dict[str, np.ndarray]]:
    tag = ctx.group(step, name)
    codes = tag.codes[index]
    return tag, {str(tag.vocab[c]): index[codes == c] for c in np.unique(codes)}


@register("sample")
@dataclass(kw_only=True)
class Sample(SelectStep):
    """Keep a seeded random sample of `count` rows or of at most `tokens` tokens (`tokenizer`, `fields`),
    in their original order. With `by` (a tag or field) and `ratio` ({value: weight}), each value gets its
    share (largest remainder; weight 0 drops that value); rows of values not in `ratio` are dropped. A share
    that cannot be met is a warning saying what was delivered."""

    count: int | None = None
    tokens: int | None = None
    tokenizer: str | None = None
    fields: list[str] | None = None
    by: str | None = None
    ratio: dict[str, float] | None = None
    seed: int | None = None

    def __post_init__(self):
        if (self.count is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'count' or 'tokens'")
        if (self.count or 0) < 0 or (self.tokens or 0) < 0:
            raise ValueError("count and tokens must be >= 0")
        if self.tokens is not None and (self.tokenizer is None or not self.fields):
            raise ValueError("'tokens' needs 'tokenizer' and 'fields' (the text whose tokens are counted)")
        if (self.by is None) != (self.ratio is None):
            raise ValueError("'by' and 'ratio' go together")
        if self.ratio is not None and (any(w < 0 for w in self.ratio.values()) or not any(self.ratio.values())):
            raise ValueError(f"ratio weights must be >= 0, at least one > 0; got {self.ratio}")

    def uses_tokenizer(self):
        return self.tokenizer if self.tokens is not None else None

    def heavy(self):
        return self.tokens is not None

    def collectors(self):
        out = {}
        if self.tokens is not None:
            out["tokens"] = feat.TokenCollector(self.fields, self.tokenizer, self._tags)
        if self.by is not None and self.by not in self._tags:
            out[f"by:{self.by}"] = feat.GroupCollector(self.by, self._tags)
        return out

    def select(self, ctx: SelectContext) -> None:
        index = np.flatnonzero(ctx.active)
        target = self.count if self.count is not None else self.tokens
        unit = "rows" if self.count is not None else "tokens"
        if self.by is None:
            groups, shares = {"all": index}, {"all": target}
        else:
            _, groups = _group_index(self, ctx, self.by, index)
            shares = _largest_remainder(target, self.ratio)
            dropped = {g: len(i) for g, i in groups.items() if g not in shares}
            if dropped:
                ctx.warnings.append(f"{self.by} values not in ratio were dropped: {_pairs(dropped)}")
        keep_parts, delivered = [], {}
        for group, share in shares.items():
            candidates = groups.get(group, np.zeros(0, np.int64))
            rng = self.numpy_rng(group)
            if self.count is not None:
                chosen = _choose_count(rng, candidates, share)
                got = len(chosen)
            else:
                tokens = ctx.features["tokens"]
                chosen = _choose_tokens(rng, candidates, tokens, share)
                got = int(tokens[chosen].sum())
            keep_parts.append(chosen)
            delivered[group] = {"rows": int(len(chosen)), "wanted_" + unit: int(share), unit: got}
            if self.count is not None and got < share:
                what = f"{self.by} '{group}'" if self.by else "sample"
                ctx.warnings.append(f"{what}: wanted {share} rows, only {got} available: delivered {got}")
            if self.tokens is not None and got < share and len(chosen) == len(candidates):
                what = f"{self.by} '{group}'" if self.by else "sample"
                ctx.warnings.append(f"{what}: budget {share} tokens, only {got} available: delivered all "
                                    f"{len(chosen)} rows")
        keep = np.zeros(len(ctx.mask), dtype=bool)
        for part in keep_parts:
            keep[part] = True
        ctx.mask[index[~keep[index]]] = False
        ctx.details["delivered"] = delivered


@register("quota")
@dataclass(kw_only=True)
class Quota(SelectStep):
    """Keep a seeded sample of `counts[value]` rows for each value of `by` (a tag or field). Values not
    in `counts`: `rest: drop` (default) or `keep`. A quota that cannot be met is a warning saying what was
    delivered (`strict: true` makes it an error)."""

    by: str
    counts: dict[str, int]
    rest: Literal["drop", "keep"] = "drop"
    strict: bool = False
    seed: int | None = None

    def __post_init__(self):
        if not self.counts or any(n < 0 for n in self.counts.values()):
            raise ValueError(f"counts must be a non-empty mapping of value: rows >= 0, got {self.counts}")

    def collectors(self):
        return {} if self.by in self._tags else {f"by:{self.by}": feat.GroupCollector(self.by, self._tags)}

    def select(self, ctx: SelectContext) -> None:
        index = np.flatnonzero(ctx.active)
        _, groups = _group_index(self, ctx, self.by, index)
        keep = np.zeros(len(ctx.mask), dtype=bool)
        delivered, short = {}, []
        for group, want in self.counts.items():
            candidates = groups.get(group, np.zeros(0, np.int64))
            chosen = _choose_count(self.numpy_rng(group), candidates, want)
            keep[chosen] = True
            delivered[group] = {"wanted": want, "delivered": int(len(chosen))}
            if len(chosen) < want:
                short.append(f"'{group}': wanted {want}, delivered {len(chosen)}")
        rest = {g: len(i) for g, i in groups.items() if g not in self.counts}
        if self.rest == "keep":
            for g in rest:
                keep[groups[g]] = True
        ctx.mask[index[~keep[index]]] = False
        ctx.details.update(delivered=delivered, rest={"policy": self.rest, "rows": rest})
        if short:
            message = f"quota by {self.by} not met: " + "; ".join(short)
            if self.strict:
                raise self.error(message + " (strict: true)")
            ctx.warnings.append(message)


# ---------------------------------------------------------------------------------------------- prompts


@register("prompt_template")
@dataclass(kw_only=True)
class PromptTemplate(MapStep):
    """Turn task data into an instruction: for each row, pick (seeded) one prompt for its task type from
    `dir`/<type>.pre.prompt (placed before `field`'s text) and <type>.post.prompt (after it), one prompt per
    line (blank lines skipped; a literal \\n is a newline), and write the result to `target`. `type` names the
    tag or field holding the task type. `placement`: random (any pre or post line), pre, or post."""

    dir: str
    type: str
    field: str
    target: str = "instruction"
    placement: Literal["random", "pre", "post"] = "random"
    separator: str = "\n"

    def prepare(self) -> None:
        folder = Path(self.dir)
        if not folder.is_dir():
            raise self.error(f"prompt folder {self.dir} not found (resolved to {folder.resolve()})")
        self._prompts: dict[str, dict[str, list[str]]] = {}
        for path in sorted(folder.glob("*.prompt")):
            stem, dot, where = path.stem.rpartition(".")
            if not dot or where not in ("pre", "post"):
                raise self.error(f"{path}: prompt files are named <type>.pre.prompt or <type>.post.prompt")
            lines = [line.replace("\\n", "\n") for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip()]
            if not lines:
                raise self.error(f"{path}: empty (one prompt per line)")
            self._prompts.setdefault(stem, {"pre": [], "post": []})[where] = lines
        if not self._prompts:
            raise self.error(f"{folder.resolve()}: no *.pre.prompt / *.post.prompt files")

    def apply(self, row, ctx: RowContext):
        kind = feat.field_text(row, ctx.tags, self.type, self._tags)
        prompts = self._prompts.get(kind, {})
        choices = [(where, p) for where in ("pre", "post") if self.placement in (where, "random")
                   for p in prompts.get(where, [])]
        if not choices:
            wanted = " or ".join(f"{kind}.{w}.prompt" for w in ("pre", "post") if self.placement in (w, "random"))
            raise FieldError(self.type, f"no prompt for task type {kind!r}: {wanted} missing in "
                                        f"{Path(self.dir).resolve()} (types with prompts: {sorted(self._prompts)})")
        where, prompt = ctx.rng(self).choice(choices)
        body = feat.field_text(row, ctx.tags, self.field, self._tags)
        out = dict(row)
        out[self.target] = prompt + self.separator + body if where == "pre" else body + self.separator + prompt
        return out


@register("compact_solution")
@dataclass(kw_only=True)
class CompactSolution(MapStep):
    """Shorten GSM8K-style solutions in `field` (default `answer`), keeping the final `#### <number>` line that
    lm-eval's strict match reads: `keep: equations` keeps each `<<48/2=24>>` calculator annotation's equation, one
    per line, then the final line ("48/2=24\\n48+24=72\\n#### 72"); `keep: final` keeps the final line only. A
    value whose last line is not `#### <number>` is an error naming the field. For small models on a CPU budget
    (benchmarks/README.md, "Format rate at the demo's budget"); eval data keeps its full solutions."""

    field: str = "answer"
    keep: Literal["equations", "final"] = "equations"

    def apply(self, row, ctx: RowContext):
        from sftpack.answer import ends_with_answer

        text = feat.field_text(row, ctx.tags, self.field, self._tags)
        if not ends_with_answer(text):
            tail = text.rstrip().rsplit("\n", 1)[-1]
            raise FieldError(self.field, f"last line must be '#### <number>', got {tail!r:.60}")
        final = text.rstrip().rsplit("\n", 1)[-1].strip()
        steps = CALCULATOR_RE.findall(text) if self.keep == "equations" else []
        out = dict(row)
        out[self.field] = "\n".join([*steps, final])
        return out


CALCULATOR_RE = re.compile(r"<<([^<>]*)>>")   # GSM8K's calculator annotations: <<48/2=24>>


# ---------------------------------------------------------------------------------------------- MCQ


@register("mcq_augment")
@dataclass(kw_only=True)
class McqAugment(MapStep):
    """Multiple-choice rows (question, options, answer letter) -> 1 + `shuffles` alpaca-style rows: variant 0
    keeps the options in order; each further variant shuffles them (seeded), re-letters them and moves the
    answer letter, to a different letter each time while letters remain. `output` holds the answer letter
    and its text (`answer_template`). Sets the tag `variant` (0..shuffles) for `epoch_split`."""

    EXPANDS = True
    question: str = "Question"
    options: list[str] = field(default_factory=lambda: ["A", "B", "C", "D"])
    answer: str = "Answer"
    shuffles: int = 3
    keep: list[str] = field(default_factory=list)
    instruction_field: str = "instruction"
    output_field: str = "output"
    template: str = "{question}\n{options}"
    answer_template: str = "{letter}. {text}"
    tag: str = "variant"

    def __post_init__(self):
        if not 2 <= len(self.options) <= 26:
            raise ValueError(f"options must name 2 to 26 fields, got {self.options}")
        if self.shuffles < 0:
            raise ValueError(f"shuffles must be >= 0, got {self.shuffles}")
        self._letters = string.ascii_uppercase[:len(self.options)]
        for name, template, keys in (("template", self.template, {"question", "options"}),
                                     ("answer_template", self.answer_template, {"letter", "text"})):
            used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            if used - keys:
                raise ValueError(f"{name} {template!r}: unknown placeholders {sorted(used - keys)}; "
                                 f"expected {sorted(keys)}")

    def creates_tags(self):
        return (self.tag,)

    def _render(self, question: str, texts: list[str], answer: int, row: dict) -> dict:
        options = "\n".join(f"{letter}. {text}" for letter, text in zip(self._letters, texts, strict=True))
        out = {self.instruction_field: self.template.format(question=question, options=options),
               self.output_field: self.answer_template.format(letter=self._letters[answer], text=texts[answer])}
        for name in self.keep:
            if name not in row:
                raise FieldError(name, "missing (listed in keep)")
            out[name] = row[name]
        return out

    def apply(self, row, ctx: RowContext):
        question = feat.field_text(row, ctx.tags, self.question, self._tags)
        texts = []
        for name in self.options:
            value = row.get(name)
            if value is None:
                raise FieldError(name, "missing option")
            texts.append(str(value))
        letter = row.get(self.answer)
        letter = letter.strip() if isinstance(letter, str) else letter
        if letter not in tuple(self._letters):
            raise FieldError(self.answer, f"answer letter {letter!r} is not one of {'/'.join(self._letters)}")
        answer = self._letters.index(letter)
        variants = [(self._render(question, texts, answer, row), {self.tag: 0})]
        rng = ctx.rng(self)
        targets = [i for i in range(len(texts)) if i != answer]
        rng.shuffle(targets)
        for k in range(self.shuffles):
            target = targets[k % len(targets)]
            others = [t for i, t in enumerate(texts) if i != answer]
            rng.shuffle(others)
            shuffled = others[:target] + [texts[answer]] + others[target:]
            variants.append((self._render(question, shuffled, target, row), {self.tag: k + 1}))
        return variants


@register("epoch_split")
@dataclass(kw_only=True)
class EpochSplit(SelectStep):
    """Tag rows `split` = train / valid / test: every row of the earlier variants is train; from the last
    variant, `valid` and `test` rows per value of `by` (e.g. subject) are drawn (seeded) and the rest is
    `rest` (train or drop). `exclude_eval_questions: true` also drops the earlier variants of the questions
    drawn for valid/test from train. Outputs are then written per split, `<name>_<split>`."""

    by: str = "subject"
    valid: int = 20
    test: int = 20
    variant: str = "variant"
    rest: Literal["train", "drop"] = "train"
    exclude_eval_questions: bool = False
    seed: int | None = None

    def creates_tags(self):
        return (SPLIT_TAG,)

    def check(self, plan) -> None:
        self.require_tag(self.variant, plan, "run mcq_augment before epoch_split")

    def collectors(self):
        return {} if self.by in self._tags else {f"by:{self.by}": feat.GroupCollector(self.by, self._tags)}

    def select(self, ctx: SelectContext) -> None:
        index = np.flatnonzero(ctx.active)
        variant = ctx.tags[self.variant]
        variants = np.array([int(v) for v in variant.vocab], dtype=np.int64)[variant.codes[index]]
        last = int(variants.max()) if len(index) else 0
        labels = np.zeros(len(ctx.mask), dtype=np.int32)   # 0 train, 1 valid, 2 test
        last_rows = index[variants == last]
        _, groups = _group_index(self, ctx, self.by, last_rows)
        delivered, short = {}, []
        for group in sorted(groups):
            rows = groups[group]
            order = rows[self.numpy_rng(group).permutation(len(rows))]
            valid, test = order[:self.valid], order[self.valid:self.valid + self.test]
            labels[valid], labels[test] = 1, 2
            delivered[group] = {"valid": int(len(valid)), "test": int(len(test)),
                                "train_last_variant": int(len(rows) - len(valid) - len(test))}
            if len(valid) < self.valid or len(test) < self.test:
                short.append(f"'{group}': {len(rows)} questions, delivered {len(valid)} valid, {len(test)} test")
        if self.rest == "drop":
            ctx.mask[last_rows[labels[last_rows] == 0]] = False
        if self.exclude_eval_questions:
            held = np.isin(ctx.question[index], ctx.question[index[labels[index] > 0]])
            ctx.mask[index[held & (labels[index] == 0)]] = False
        vocab = ["train", "valid", "test"]
        ctx.new_tags[SPLIT_TAG] = Tag(labels, vocab)
        ctx.details.update(last_variant=last, per_group=delivered)
        if short:
            ctx.warnings.append(f"epoch_split by {self.by}: wanted {self.valid} valid + {self.test} test per "
                                f"value; short: " + "; ".join(short))


# ---------------------------------------------------------------------------------------------- format


FORMATS = ("alpaca", "sharegpt", "messages")


@register("format")
@dataclass(kw_only=True)
class Format(MapStep):
    """Map fields (or tags) onto the written layout. `to: text` -> {"text": ...} (`text` required: pretraining
    text, LLaMA-Factory's `columns: {prompt: text}`, for `stage: pt` / `swift pt`); `to: alpaca` ->
    instruction/input/output[/system] (`instruction`, `output` required, `input`, `system` optional);
    `to: sharegpt` -> conversations of from/value; `to: messages` -> OpenAI-style messages of role/content (`user`, `assistant` required,
    `system` optional). `keep` copies further fields as they are. Sets the dataset_info entry."""

    to: Literal["alpaca", "sharegpt", "messages", "text"]
    text: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    user: str | None = None
    assistant: str | None = None
    system: str | None = None
    keep: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.to == "text":
            wrong, need = ("instruction", "input", "output", "user", "assistant", "system"), ("text",)
        elif self.to == "alpaca":
            wrong, need = ("user", "assistant", "text"), ("instruction", "output")
        else:
            wrong, need = ("instruction", "input", "output", "text"), ("user", "assistant")
        bad = [k for k in wrong if getattr(self, k) is not None]
        if bad:
            optional = {"alpaca": " (+ optional input, system)", "text": ""}.get(self.to, " (+ optional system)")
            raise ValueError(f"to: {self.to} takes {list(need)}{optional}, not {bad}")
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"to: {self.to} needs {missing}")

    def entry(self) -> dict:
        if self.to == "text":   # LLaMA-Factory's pretraining text (stage: pt); Swift serves it to `swift pt`
            return {"formatting": "alpaca", "columns": {"prompt": "text"}}
        if self.to == "alpaca":
            columns = {"prompt": "instruction", "query": "input", "response": "output"}
            if self.system:
                columns["system"] = "system"
            return {"formatting": "alpaca", "columns": columns}
        if self.to == "sharegpt":
            columns = {"messages": "conversations"}
            if self.system:
                columns["system"] = "system"
            return {"formatting": "sharegpt", "columns": columns}
        return {"formatting": "sharegpt", "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"}}

    def _text(self, row, ctx, name, allow_empty=False) -> str:
        value = feat.field_text(row, ctx.tags, name, self._tags)
        if not allow_empty and not value.strip():
            raise FieldError(name, "is empty")
        return value

    def apply(self, row, ctx: RowContext):
        if self.to == "text":
            out = {"text": self._text(row, ctx, self.text)}
        elif self.to == "alpaca":
            out = {"instruction": self._text(row, ctx, self.instruction),
                   "input": self._text(row, ctx, self.input, True) if self.input else "",
                   "output": self._text(row, ctx, self.output)}
            if self.system:
                out["system"] = self._text(row, ctx, self.system, True)
        else:
            user, assistant = self._text(row, ctx, self.user), self._text(row, ctx, self.assistant)
            system = self._text(row, ctx, self.system, True) if self.system else None
            if self.to == "sharegpt":
                out = {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]}
                if system is not None:
                    out["system"] = system
            else:
                messages = [{"role": "system", "content": system}] if system is not None else []
                out = {"messages": messages + [{"role": "user", "content": user},
                                               {"role": "assistant", "content": assistant}]}
        for name in self.keep:
            value = ctx.tags.get(name) if name in self._tags else row.get(name)
            if value is None:
                raise FieldError(name, "missing (listed in keep)")
            out[name] = value
        return out
