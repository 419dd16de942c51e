"""Per-batch mixtures (issue 15 part 4): every block of B consecutive rows holds each set's quota, and both
frameworks' own training loops keep that order (one block per optimizer step).

    .venv/bin/python -m pytest tests/test_batch_composition.py                       # all (~1.5 min on 2 CPUs)
    .venv/bin/python -m pytest tests/test_batch_composition.py -m "not integration"  # without framework code

The integration tests write a per_batch mix of two small local datasets, build a training config from a shipped
one + the mix's own keys, and run it in the framework's own entry point (`llamafactory.train.tuner.run_exp`, as
`llamafactory-cli train` does in one process; Swift's `sft_main` on the argv `swift sft` builds from the YAML) in
a child process that is this file run as a script (under torchrun for 2 processes): it wraps
`transformers.Trainer.training_step` (which both trainers reach) to record every micro-batch the Trainer's
dataloader fed, with the optimizer step it belonged to. The test decodes the rows' ids and checks every optimizer
step (and with accumulation 1, every batch) against the quotas, and the sequence against the written file.
With shuffling on they fail (checked by hand on 2026-12-01, all six: LF `disable_shuffling: false`, Swift
`train_dataloader_shuffle: true` -> a step with 7 aa + 1 bb; Swift `dataset_shuffle: true` alone -> the
2-process test's rows are not the block's).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sftpack import dataset_info
from sftpack.errors import SftpackError

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "dataset_info" / "recipes"
MARK = re.compile(r"\[(aa|bb)(\d+)\]")
QUOTAS = {"aa": 6, "bb": 2}                 # B = 8
ROWS = {"aa": 30, "bb": 13}                 # aa fills 5 blocks, bb 6: 5 blocks, aa runs out, 3 bb rows left


def write_sets(folder: Path, rows: dict[str, int] = ROWS, formatting: dict[str, dict] | None = None) -> Path:
    """`folder/dataset_info/` with alpaca sets whose every row names itself: '[aa17] ...'."""
    out = folder / "dataset_info"
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, count in rows.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for i in range(count):
                handle.write(json.dumps({"instruction": f"[{name}{i}] What is {i} plus {len(name)}?", "input": "",
                                         "output": f"{i} plus {len(name)} is {i + len(name)}."}) + "\n")
        entries[name] = {"file_name": f"{name}.jsonl", **((formatting or {}).get(name) or {})}
    (out / "dataset_info.json").write_text(json.dumps(entries, indent=2), encoding="utf-8")
    return out


def write_mix(folder: Path, body: str, name: str = "mix.yaml") -> Path:
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


def per_batch(name: str = "ab", batch: str = "{aa: 6, bb: 2}", **extra) -> str:
    lines = [f"  {k}: {v}" for k, v in extra.items()]
    return "\n".join(["mixture:", f"  name: {name}", "  mode: per_batch", f"  batch: {batch}", *lines]) + "\n"


def marks(text: str) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2))) for m in MARK.finditer(text)]


def file_order(path: Path) -> list[tuple[str, int]]:
    with path.open(encoding="utf-8") as handle:
        return [marks(json.loads(line)["instruction"])[0] for line in handle]


def bad_blocks(order: list[tuple[str, int]], size: int, quotas: dict[str, int]) -> list[int]:
    """Indices of the blocks of `size` consecutive rows that do not hold exactly `quotas`."""
    return [k for k in range(0, len(order), size)
            if Counter(name for name, _ in order[k:k + size]) != Counter(quotas)]


def run(mix: Path, out: Path, **kwargs):
    from sftpack.recipes.mixture import run_mixture

    return run_mixture(mix, out, **kwargs)


# ---------------------------------------------------------------------------------------------- ordering


def test_block_order_gives_every_block_its_quota_once_per_row_and_is_seeded():
    from sftpack.recipes.mixture import block_order

    order, blocks = block_order({"a": 100, "b": 7, "c": 50}, {"a": 5, "b": 1, "c": 2}, seed=3)
    assert blocks == 7 and len(order) == 7 * 8                       # b (7 rows, 1 a block) ends the mix
    assert bad_blocks(order, 8, {"a": 5, "b": 1, "c": 2}) == []
    assert len(set(order)) == len(order)                             # no row twice
    assert {n for n, _ in order} == {"a", "b", "c"} and max(i for n, i in order if n == "a") < 100
    assert block_order({"a": 100, "b": 7, "c": 50}, {"a": 5, "b": 1, "c": 2}, seed=3)[0] == order
    other = block_order({"a": 100, "b": 7, "c": 50}, {"a": 5, "b": 1, "c": 2}, seed=4)[0]
    assert other != order and bad_blocks(other, 8, {"a": 5, "b": 1, "c": 2}) == []
    # places inside blocks are shuffled (not always a-first) and which rows are used is random too
    assert len({tuple(n for n, _ in order[k:k + 8]) for k in range(0, len(order), 8)}) > 1
    assert sorted(i for n, i in order if n == "a") != list(range(35))


def test_the_block_check_catches_a_shuffled_order():
    """The check every test below relies on fails for the same rows in a shuffled order (a control)."""
    import random

    from sftpack.recipes.mixture import block_order

    order, _ = block_order({"a": 30, "b": 13}, {"a": 6, "b": 2}, seed=0)
    shuffled = list(order)
    random.Random(0).shuffle(shuffled)
    assert bad_blocks(order, 8, {"a": 6, "b": 2}) == [] and bad_blocks(shuffled, 8, {"a": 6, "b": 2}) != []


# ---------------------------------------------------------------------------------------------- writing


def test_per_batch_writes_one_dataset_its_entry_and_the_keys(tmp_path, capsys):
    out = write_sets(tmp_path)
    mix = write_mix(tmp_path, per_batch(per_device_train_batch_size=4, seed=1))
    result = run(mix, out)

    order = file_order(out / "ab.jsonl")
    assert len(order) == 40 and bad_blocks(order, 8, QUOTAS) == [] and len(set(order)) == 40
    entries = dataset_info.load(out / "dataset_info.json")
    assert entries["ab"] == {"file_name": "ab.jsonl"} and set(entries) == {"aa", "bb", "ab"}
    manifest = json.loads((out / ".sftpack-manifest.json").read_text())
    assert manifest["files"]["ab.jsonl"]["by"] == manifest["files"]["ab.mix.yaml"]["by"] == "mixture ab"
    assert manifest["entries"]["ab"]["entry"] == entries["ab"]

    written = yaml.safe_load(result.file.read_text())
    assert written["llamafactory"] == result.llamafactory == {
        "dataset": "ab", "disable_shuffling": True, "streaming": False, "val_size": 0.0, "packing": False,
        "neat_packing": False, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
    assert written["swift"] == result.swift == {
        "dataset": ["ab"], "dataset_shuffle": False, "train_dataloader_shuffle": False, "group_by_length": False,
        "streaming": False, "packing": False, "split_dataset_ratio": 0.0, "truncation_strategy": "right",
        "strict": True, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
    report = written["per_batch"]
    assert (report["rows"], report["blocks"], report["global_batch_size"], report["ended_by"]) == (40, 5, 8, ["aa"])
    assert written["datasets"]["bb"] == {"rows": 13, "quota": 2, "used": 10, "left": 3}
    assert written["datasets"]["aa"] == {"rows": 30, "quota": 6, "used": 30, "left": 0}
    lf, swift = result.commands()
    assert lf.endswith("dataset=ab disable_shuffling=true streaming=false val_size=0.0 packing=false "
                       "neat_packing=false per_device_train_batch_size=4 gradient_accumulation_steps=2")
    assert "--dataset ab --dataset_shuffle false --train_dataloader_shuffle false" in swift
    assert f"#   {lf}" in result.file.read_text()
    err = capsys.readouterr().err
    assert "5 blocks of 8 (40 rows, each block 6 aa, 2 bb); aa ran out" in err and "bb 10 of 13 (3 left)" in err

    # the same seed again: the same bytes, its own files replaced without --overwrite; another seed: another order
    sha = dataset_info.file_sha256(out / "ab.jsonl")
    run(mix, out)
    assert dataset_info.file_sha256(out / "ab.jsonl") == sha
    run(write_mix(tmp_path, per_batch(per_device_train_batch_size=4, seed=2)), out)
    again = file_order(out / "ab.jsonl")
    assert again != order and bad_blocks(again, 8, QUOTAS) == []
    # back to a probability mixture of the same name: the per_batch dataset and entry go with it
    run(write_mix(tmp_path, "mixture: {name: ab, datasets: {aa: 1, bb: 1}}\n"), out)
    assert not (out / "ab.jsonl").exists() and "ab" not in dataset_info.load(out / "dataset_info.json")
    assert not list(out.glob(".*.tmp"))


def test_sharegpt_sets_and_world_size(tmp_path):
    out = tmp_path / "dataset_info"
    out.mkdir()
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags}
    for name, count in (("aa", 12), ("bb", 12)):
        with (out / f"{name}.jsonl").open("w") as handle:
            for i in range(count):
                handle.write(json.dumps({"messages": [{"role": "user", "content": f"[{name}{i}]"},
                                                      {"role": "assistant", "content": "ok"}]}) + "\n")
    (out / "dataset_info.json").write_text(json.dumps({n: {"file_name": f"{n}.jsonl", **entry} for n in ("aa", "bb")}))
    result = run(write_mix(tmp_path, per_batch(batch="{aa: 3, bb: 1}", world_size=2)), out)
    assert dataset_info.load(out / "dataset_info.json")["ab"] == {"file_name": "ab.jsonl", **entry}
    assert (result.llamafactory["per_device_train_batch_size"], result.llamafactory["gradient_accumulation_steps"],
            result.per_batch["world_size"], result.per_batch["blocks"]) == (2, 1, 2, 4)
    with (out / "ab.jsonl").open() as handle:
        order = [marks(json.loads(line)["messages"][0]["content"])[0] for line in handle]
    assert bad_blocks(order, 4, {"aa": 3, "bb": 1}) == []


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("body, message", [
    (per_batch(batch="{aa: 6, bb: 0}"), "mixture: batch quotas must be integers >= 1, got {'bb': 0}"),
    (per_batch(batch="{aa: 6, bb: -2}"), "mixture: batch quotas must be integers >= 1, got {'bb': -2}"),
    (per_batch(batch="{aa: 6, bb: 2.5}"), "mixture.batch.bb: must be an integer, got 2.5"),
    (per_batch(batch="{aa: 6, bb: '2'}"), "mixture.batch.bb: must be an integer, got '2'"),
    (per_batch(batch="{aa: 6, bb: true}"), "mixture.batch.bb: must be an integer, got True"),
    (per_batch(batch="{aa: 8}"), "'batch' needs at least two names with their rows per batch, got {'aa': 8}"),
    (per_batch(global_batch_size=16), "the batch quotas {'aa': 6, 'bb': 2} sum to 8, not global_batch_size 16"),
    (per_batch(per_device_train_batch_size=3), "per_device_train_batch_size 3 x world_size 1 does not divide the "
                                               "global batch 8"),
    (per_batch(world_size=3), "the global batch 8 does not split over world_size 3"),
    (per_batch(per_device_train_batch_size=4, world_size=4), "per_device_train_batch_size 4 x world_size 4 does "
                                                            "not divide the global batch 8"),
    (per_batch() + "  datasets: {aa: 1, bb: 1}\n", "['datasets'] belong to `mode: probability`"),
    (per_batch() + "  strategy: interleave_over\n", "['strategy'] belong to `mode: probability`"),
    ("mixture: {name: ab, datasets: {aa: 1, bb: 1}, batch: {aa: 1, bb: 1}}\n",
     "['batch'] belong to `mode: per_batch`; this mixture is `mode: probability`"),
    (per_batch(mode_typo=1).replace("mode_typo", "modee"), "unknown keys ['modee']"),
    (per_batch().replace("per_batch", "per_batches"), "mixture.mode: must be one of ['probability', 'per_batch']"),
])
def test_schema_errors_name_file_line_and_key(tmp_path, body, message):
    out = write_sets(tmp_path)
    before = (out / "dataset_info.json").read_text()
    mix = write_mix(tmp_path, body)
    with pytest.raises(SftpackError) as err:
        run(mix, out)
    line = 1 if body.startswith("mixture: {") else 2            # the `mixture:` mapping's first line
    assert str(err.value).startswith(f"{mix} line {line}: mixture")
    assert message in str(err.value)
    assert (out / "dataset_info.json").read_text() == before and sorted(p.name for p in out.iterdir()) == [
        "aa.jsonl", "bb.jsonl", "dataset_info.json"]


def test_data_errors_name_the_sets_and_write_nothing(tmp_path):
    out = write_sets(tmp_path, {"aa": 30, "bb": 13, "cc": 4},
                     formatting={"cc": {"columns": {"prompt": "question", "response": "answer"}}})
    before = (out / "dataset_info.json").read_text()

    def error(body: str) -> str:
        mix = write_mix(tmp_path, body)
        with pytest.raises(SftpackError) as err:
            run(mix, out)
        assert (out / "dataset_info.json").read_text() == before and not (out / "ab.jsonl").exists()
        assert not (out / "ab.mix.yaml").exists() and not list(out.glob(".*tmp"))
        return str(err.value)

    text = error(per_batch(batch="{aa: 6, zz: 2}"))
    assert text.startswith(f"{tmp_path / 'mix.yaml'} line 4: mixture.batch: datasets ['zz'] are not in ")
    assert "Entries: ['aa', 'bb', 'cc']" in text
    text = error(per_batch(batch="{aa: 6, cc: 2}"))
    assert "mixture.batch: the datasets must have the same formatting, columns and tags" in text
    assert "aa: alpaca, columns {}" in text and "cc: alpaca, columns {'prompt': 'question'" in text
    text = error(per_batch(batch="{aa: 6, bb: 14}"))
    assert "mixture.batch: not enough rows for one block of 20: {'bb': '13 rows < quota 14'}" in text
    assert "'bb' is also one of the mixed datasets" in error(per_batch(name="bb"))

    (out / "bb.jsonl").write_text((out / "bb.jsonl").read_text() + '{"instruction": "x"}\n')
    text = error(per_batch())
    assert f"{(out / 'bb.jsonl').resolve()} line 14: no text in ['output'] (dataset 'bb'" in text
    (out / "bb.jsonl").write_text('{"instruction": "x", "output": "y"}\nnot json\n')
    assert "bb.jsonl line 2: not valid JSON" in error(per_batch(batch="{aa: 6, bb: 1}"))

    info = json.loads(before)
    info["bb"]["num_samples"] = 5
    (out / "dataset_info.json").write_text(json.dumps(info))
    before = (out / "dataset_info.json").read_text()
    assert "'bb': entry keys ['num_samples'] are not supported in a per_batch mix" in error(per_batch())
    info["bb"] = {"hf_hub_url": "org/bb"}
    (out / "dataset_info.json").write_text(json.dumps(info))
    before = (out / "dataset_info.json").read_text()
    assert "'bb' is not a local file entry" in error(per_batch())


def test_never_replaces_a_users_file_or_entry(tmp_path):
    out = write_sets(tmp_path)
    mix = write_mix(tmp_path, per_batch())
    (out / "ab.jsonl").write_text("mine\n")
    with pytest.raises(SftpackError, match=r"ab.jsonl would be replaced, and sftpack did not write it"):
        run(mix, out)
    assert (out / "ab.jsonl").read_text() == "mine\n" and "ab" not in dataset_info.load(out / "dataset_info.json")
    (out / "ab.jsonl").unlink()
    info = json.loads((out / "dataset_info.json").read_text())
    info["ab"] = {"file_name": "elsewhere.jsonl"}
    (out / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(SftpackError, match=r"dataset_info.json entry 'ab' would be replaced"):
        run(mix, out)
    assert not (out / "ab.jsonl").exists() and not list(out.glob(".*tmp"))
    run(mix, out, overwrite=True)
    assert dataset_info.load(out / "dataset_info.json")["ab"] == {"file_name": "ab.jsonl"}


def test_the_shipped_example_on_the_recipes_it_names(tmp_path, shared_data, capsys):
    """dataset_info/recipes/batch_mix.yaml after the two recipes that make its datasets (real data)."""
    from sftpack.recipes.run import run_recipe

    out = tmp_path / "dataset_info"
    run_recipe(RECIPES / "gsm8k_math_quota.yaml", out, var_overrides={"data": str(shared_data)}, progress=False)
    run_recipe(RECIPES / "cmmlu_mcq_epoch.yaml", out, var_overrides={"cmmlu": str(shared_data / "cmmlu" / "test")},
               progress=False)
    result = run(RECIPES / "batch_mix.yaml", out)
    mix = result.mixture
    entries = dataset_info.load(out / "dataset_info.json")
    assert entries[mix.name] == {**entries["gsm8k_math_quota"], "file_name": f"{mix.name}.jsonl"}
    gsm = {line for line in (out / "gsm8k_math_quota.jsonl").read_text(encoding="utf-8").splitlines()}
    rows = (out / f"{mix.name}.jsonl").read_text(encoding="utf-8").splitlines()
    size = mix.batch_size
    quota = mix.batch["gsm8k_math_quota"]
    assert result.per_batch["blocks"] == 1180 // quota and len(rows) == size * (1180 // quota)
    assert all(sum(row in gsm for row in rows[k:k + size]) == quota for k in range(0, len(rows), size))
    assert result.per_batch["ended_by"] == ["gsm8k_math_quota"]


# ---------------------------------------------------------------------------------------------- frameworks


def tiny_config(framework: str, model: Path, work: Path, keys: dict, steps: int) -> Path:
    """A shipped config of `framework` with the tiny-model CPU settings and the mixture's own keys on top."""
    from sftpack import frameworks as fw

    out = work / f"out-{framework}"
    if framework == "llamafactory":
        config = yaml.safe_load(fw.LF_LORA_CONFIG.read_text())
        config.update({**fw.TINY_CPU_LF, "model_name_or_path": str(model), "output_dir": str(out),
                       "dataset_dir": str(work / "dataset_info"), "cutoff_len": 128, "max_steps": steps,
                       "logging_steps": 1, "save_steps": 1000, "include_num_input_tokens_seen": False})
    else:
        config = yaml.safe_load(fw.SWIFT_LORA_CONFIG.read_text())
        config.update({**fw.TINY_CPU_SWIFT, "model": str(model), "output_dir": str(out), "max_length": 128,
                       "external_plugins": [str(fw.SWIFT_PLUGIN)], "max_steps": steps, "logging_steps": 1,
                       "save_steps": 1000})
    config.update(keys)
    path = work / f"{framework}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def record_batches(framework: str, config: Path | str, record: Path | str) -> None:
    """In this process: train with `config` through the framework's own entry point, recording every micro-batch
    (input ids per row) the Trainer's dataloader feeds `training_step`, with the optimizer step it belongs to."""
    import transformers

    seen: list[dict] = []
    original = transformers.Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        seen.append({"step": self.state.global_step, "input_ids": inputs["input_ids"].tolist()})
        return original(self, model, inputs, *args, **kwargs)

    transformers.Trainer.training_step = training_step
    rank = os.environ.get("RANK")                          # under torchrun: one record per process
    record = Path(f"{record}.{rank}" if rank is not None else record)
    if framework == "llamafactory":
        from llamafactory.train.tuner import run_exp

        sys.argv = ["llamafactory-cli", str(config)]      # what `llamafactory-cli train CONFIG` leaves for run_exp
        run_exp()
    else:
        from swift.cli.main import parse_yaml_args
        from swift.pipelines import sft_main

        argv = [str(config)]
        parse_yaml_args(argv)                              # what `swift sft CONFIG` does before it starts sft.py
        sft_main(argv)
    record.write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def mixes(tmp_path_factory):
    """Two per_batch mixes of the same sets: per device 8 (no accumulation) and per device 4 x accumulation 2."""
    work = tmp_path_factory.mktemp("batch-mix")
    out = write_sets(work)
    for micro in (8, 4):
        run(write_mix(work, per_batch(name=f"ab{micro}", per_device_train_batch_size=micro), f"ab{micro}.yaml"), out)
    run(write_mix(work, per_batch(name="abw2", per_device_train_batch_size=2, world_size=2), "abw2.yaml"), out)
    return work


def train_and_record(framework: str, mix: str, mixes: Path, model: Path, env: dict, tmp_path: Path,
                     processes: int = 1) -> tuple[dict, list[tuple[int, list[list[tuple[str, int]]]]]]:
    """Train on the mix `mix` with its own keys for as many steps as it has blocks, in a child process (under
    torchrun with `processes` > 1); returns (the .mix.yaml, [(optimizer step, rows of one micro-batch)] per rank)."""
    from tokenizers import Tokenizer

    written = yaml.safe_load((mixes / "dataset_info" / f"{mix}.mix.yaml").read_text())
    work = tmp_path / "work"
    work.mkdir()
    (work / "dataset_info").symlink_to(mixes / "dataset_info")
    config = tiny_config(framework, model, work, written[framework], steps=written["per_batch"]["blocks"])
    record = tmp_path / "batches.json"
    launch = [sys.executable]
    if processes > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]
    done = subprocess.run([*launch, __file__, framework, str(config), str(record)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    files = [record] if processes == 1 else [Path(f"{record}.{rank}") for rank in range(processes)]
    ranks = []
    for path in files:
        batches = [(b["step"], [marks(tokenizer.decode(ids, skip_special_tokens=False)) for ids in b["input_ids"]])
                   for b in json.loads(path.read_text())]
        assert all(len(row) == 1 for _, rows in batches for row in rows), "every row names itself exactly once"
        ranks.append([(step, [row[0] for row in rows]) for step, rows in batches])
    return written, ranks


@pytest.mark.integration
@pytest.mark.parametrize("micro", [8, 4])
@pytest.mark.parametrize("framework", ["llamafactory", "swift"])
def test_the_frameworks_dataloaders_keep_the_composition(framework, micro, mixes, tiny_model, env, tmp_path):
    """One process: per device 8 (every batch holds the quota) and per device 4 x accumulation 2 (every optimizer
    step does), and the rows come in the written order, row for row."""
    written, (batches,) = train_and_record(framework, f"ab{micro}", mixes, Path(tiny_model).resolve(), env, tmp_path)
    blocks, accumulation = written["per_batch"]["blocks"], written[framework]["gradient_accumulation_steps"]
    assert accumulation == 8 // micro and blocks == 5
    assert len(batches) == blocks * accumulation and all(len(rows) == micro for _, rows in batches)
    for step in range(blocks):                                                   # every optimizer step: one block
        window = [row for s, rows in batches if s == step for row in rows]
        assert Counter(name for name, _ in window) == Counter(QUOTAS), (step, window)
    if accumulation == 1:                                                        # and then every batch
        assert all(Counter(name for name, _ in rows) == Counter(QUOTAS) for _, rows in batches)
    seen = [row for _, rows in batches for row in rows]
    assert seen == file_order(mixes / "dataset_info" / f"ab{micro}.jsonl")     # the written order, row for row


@pytest.mark.integration
@pytest.mark.parametrize("framework", ["llamafactory", "swift"])
def test_two_processes_share_each_block(framework, mixes, tiny_model, env, tmp_path):
    """torchrun with 2 processes (gloo) on the mix written for world_size 2 (per device 2 x accumulation 2 x 2):
    the micro-batches both ranks train on in one optimizer step are exactly one block of the file."""
    written, ranks = train_and_record(framework, "abw2", mixes, Path(tiny_model).resolve(), env, tmp_path,
                                      processes=2)
    assert (written[framework]["per_device_train_batch_size"], written[framework]["gradient_accumulation_steps"]) \
        == (2, 2)
    order = file_order(mixes / "dataset_info" / "abw2.jsonl")
    position = {row: i for i, row in enumerate(order)}
    blocks = written["per_batch"]["blocks"]
    assert all(len(batches) == blocks * 2 and all(len(rows) == 2 for _, rows in batches) for batches in ranks)
    for step in range(blocks):
        window = [row for batches in ranks for s, rows in batches if s == step for row in rows]
        assert Counter(name for name, _ in window) == Counter(QUOTAS), (step, window)
        assert sorted(position[row] for row in window) == list(range(8 * step, 8 * step + 8))
    assert set(ranks[0][0][1]).isdisjoint(ranks[1][0][1])                        # the ranks read different rows


if __name__ == "__main__":
    record_batches(*sys.argv[1:4])
