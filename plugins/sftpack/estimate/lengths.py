"""Micro-batch shapes: the worst one from the config alone, or the worst and a typical one from a dataset's lengths.

    stats = dataset_lengths("gsm8k_train", Path("dataset_info"), tokenizer_dir, system, max_length, drop_long=False)
    worst_batch(plan, rows=4, stats=stats), typical_batch(plan, rows=4, stats=stats)

Without a dataset the worst micro-batch is `rows` sequences of the config's max length (cutoff_len / max_length).
With one (`--dataset NAME`: an entry of the config's dataset_info.json; alpaca or sharegpt/openai columns), every
row is measured in tokens as the chat template renders it (system, user, assistant turn), truncated to the max
length (or dropped: Swift's `truncation_strategy: delete`): the worst micro-batch holds the longest rows, a typical
one is the median of 256 seeded random batches, each padded as the framework pads. The per-row token count comes
from the tokenizer's chat template: the fixed template tokens once, the texts batch-encoded (the two frameworks
give the same ids, tests/test_config_parity.py; +-1 token per row at the template's joins).
Swift's logits_to_keep computes logits only from the batch's first labelled token: kept = padded length -
shortest prompt in the batch + 1 (the worst batch pairs the longest row with the shortest prompt of the data).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError
from sftpack.estimate.plan import MemoryPlan
from sftpack.estimate.step import MicroBatch

TYPICAL_SAMPLES = 256


@dataclass
class LengthStats:
    source: str
    lengths: list[int]          # tokens per row after truncation (dropped rows removed)
    prompts: list[int]          # prompt tokens per row (system + user turn + the assistant header)
    rows_read: int
    truncated: int
    dropped: int

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.lengths)
        return {"source": self.source, "rows": len(self.lengths), "rows_read": self.rows_read,
                "truncated": self.truncated, "dropped": self.dropped,
                "tokens_min": ordered[0], "tokens_median": ordered[len(ordered) // 2], "tokens_max": ordered[-1],
                "prompt_tokens_min": min(self.prompts)}


def _pad(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def worst_batch(plan: MemoryPlan, rows: int, stats: LengthStats | None = None) -> MicroBatch:
    if stats is None or plan.packing == "rows":   # packed rows are always full
        longest = [plan.max_length] * rows
        shortest_prompt = 1
    else:
        longest = sorted(stats.lengths, reverse=True)[:rows]
        shortest_prompt = min(stats.prompts)
    return _batch(plan, longest, shortest_prompt)


def typical_batch(plan: MemoryPlan, rows: int, stats: LengthStats) -> MicroBatch:
    if plan.packing == "rows":
        return worst_batch(plan, rows, stats)
    rng = random.Random(0)
    index = range(len(stats.lengths))
    batches = []
    for _ in range(TYPICAL_SAMPLES):
        picked = rng.sample(index, min(rows, len(stats.lengths)))
        batch = _batch(plan, [stats.lengths[i] for i in picked], min(stats.prompts[i] for i in picked))
        batches.append((batch.length, batch.logits_kept, batch))
    batches.sort(key=lambda item: (item[0], item[1]))
    return batches[len(batches) // 2][2]


def _batch(plan: MemoryPlan, lengths: list[int], shortest_prompt: int) -> MicroBatch:
    if plan.packing == "padding_free":
        total = sum(lengths)
        return MicroBatch(rows=1, length=total, logits_kept=total, padded=False)
    longest = min(_pad(max(lengths), plan.pad_to_multiple_of), _pad(plan.max_length, plan.pad_to_multiple_of))
    kept = min(longest, longest - shortest_prompt + 1) if plan.logits_to_keep else longest
    return MicroBatch(rows=len(lengths), length=longest, logits_kept=max(kept, 1),
                      padded=any(length < longest for length in lengths))


def _rows(path: Path, entry: dict[str, Any]):
    """(system, prompt, response) per row of an alpaca or sharegpt/openai dataset_info entry's file."""
    columns = entry.get("columns") or {}
    formatting = entry.get("formatting", "alpaca")
    text = path.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
        else json.loads(text)
    for row in rows:
        if formatting == "alpaca":
            prompt = str(row.get(columns.get("prompt", "instruction"), "") or "")
            query = row.get(columns.get("query", "input"))
            prompt = f"{prompt}\n{query}" if query else prompt
            yield row.get(columns.get("system", "system")), prompt, str(row.get(columns.get("response", "output"), ""))
        else:
            tags = entry.get("tags") or {}
            role, content = tags.get("role_tag", "from" if formatting == "sharegpt" else "role"), \
                tags.get("content_tag", "value" if formatting == "sharegpt" else "content")
            turns = row.get(columns.get("messages", "conversations" if formatting == "sharegpt" else "messages"), [])
            users = [t.get(content, "") for t in turns if t.get(role) in ("human", "user")]
            answers = [t.get(content, "") for t in turns if t.get(role) in ("gpt", "assistant")]
            systems = [t.get(content, "") for t in turns if t.get(role) == "system"]
            yield (systems[0] if systems else row.get(columns.get("system", "system"))), "\n".join(users), \
                "\n".join(answers)


def resolve_dataset(name: str, dataset_dir: Path) -> tuple[Path, dict[str, Any]]:
    """(data file, dataset_info entry) of `name` in `dataset_dir`/dataset_info.json, or a .jsonl/.json file."""
    as_path = Path(name)
    if as_path.suffix in (".jsonl", ".json") and as_path.is_file():
        return as_path, {"formatting": "alpaca", "columns": {"prompt": "question", "response": "answer"}}
    info = dataset_dir / "dataset_info.json"
    if not info.is_file():
        raise SftpackError(f"--dataset {name}: no {info.resolve()} (run `sftpack prepare` first, or pass a .jsonl)")
    entries = json.loads(info.read_text(encoding="utf-8"))
    if name not in entries:
        raise SftpackError(f"--dataset {name}: not an entry of {info.resolve()}. Expected one of {sorted(entries)}")
    entry = entries[name]
    if "file_name" not in entry:
        raise SftpackError(f"--dataset {name}: only local files (`file_name`) are read, not {sorted(entry)}")
    return dataset_dir / entry["file_name"], entry


def dataset_lengths(name: str, dataset_dir: Path, tokenizer_dir: Path, system: str | None, max_length: int,
                    drop_long: bool) -> LengthStats:
    from transformers import AutoTokenizer

    path, entry = resolve_dataset(name, dataset_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as err:
        raise SftpackError(f"tokenizer {tokenizer_dir}: cannot load ({str(err).splitlines()[0]})") from err
    rows = list(_rows(path, entry))
    if not rows:
        raise SftpackError(f"--dataset {name}: {path.resolve()} has no rows")

    def rendered(row_system, with_answer: bool) -> int:
        sys_text = row_system or system
        messages = ([{"role": "system", "content": sys_text}] if sys_text else []) + [{"role": "user", "content": ""}]
        if with_answer:
            messages.append({"role": "assistant", "content": ""})
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=not with_answer)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        return len(ids)

    if tokenizer.chat_template:
        prompt_fixed, full_fixed = rendered(None, False), rendered(None, True)
        answer_fixed = full_fixed - prompt_fixed
    else:
        prompt_fixed, answer_fixed = 0, 1   # plain text + eos
    encode = lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # noqa: E731
    prompts = [p + prompt_fixed for p in encode([row[1] for row in rows])]
    answers = [a + answer_fixed for a in encode([row[2] for row in rows])]
    lengths, kept_prompts, truncated, dropped = [], [], 0, 0
    for prompt, answer in zip(prompts, answers):
        total = prompt + answer
        if total > max_length:
            if drop_long:
                dropped += 1
                continue
            truncated += 1
            total = max_length
        lengths.append(total)
        kept_prompts.append(min(prompt, total))
    if not lengths:
        raise SftpackError(f"--dataset {name}: every row is longer than {max_length} tokens and is dropped")
    return LengthStats(source=f"{path.resolve()} ({tokenizer_dir} tokenizer)", lengths=lengths, prompts=kept_prompts,
                       rows_read=len(rows), truncated=truncated, dropped=dropped)
