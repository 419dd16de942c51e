"""Issue 11, the data side: `prepare`, `recipe` and `tiny-model` never lose, stale or silently mislabel a user's data.

One test (or a few) per class, on real files, real processes and real signals; wherever the user's data must be
kept, it is compared byte for byte afterwards.

    .venv/bin/python -m pytest tests/test_nothing_lost_data.py -q      # ~40 s on 2 cores

1. never overwrite what sftpack did not write      5. data the user meant (split from the name, skipped rows)
2. no stale or contaminating outputs               6. a path is a path
3. locks on dataset_info.json                      7. OS errors: one line, nothing half-written
4. clean ends (SIGTERM, SIGINT, SIGKILL)
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sftpack import dataset_info
from sftpack.cli import main
from sftpack.samples import sample_dir, sample_path

SAMPLE_TRAIN = [json.loads(line) for line in sample_path("gsm8k", "train").read_text().splitlines()]
SAMPLE_TEST = [json.loads(line) for line in sample_path("gsm8k", "test").read_text().splitlines()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) and its bytes; the lock file is not data and is left out."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".sftpack.lock"}


def prepare(*args: str) -> int:
    return main(["prepare", "gsm8k", "--quiet", *args])


def recipe(*args: str) -> int:
    return main(["recipe", "--quiet", *args])


def leftovers(folder: Path) -> list[str]:
    """Temp files and work folders a run left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith((".recipe-",
                                                                                                  ".build-")))


def sftpack_proc(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sftpack", *args], capture_output=True, text=True, timeout=120,
                          **kwargs)


def one_line_error(result) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sftpack: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


GSM_RECIPE = """\
seed: 1
inputs:
  - {{name: gsm, path: '{path}'}}
steps:
  - exact_dedup: {{fields: [question]}}
output:
  name: {name}
  columns: {{prompt: question, response: answer}}
"""


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- 1. not ours


def test_prepare_never_replaces_a_user_entry_or_file_and_reruns_its_own(tmp_path, capsys):
    out = tmp_path / "dataset_info"
    mine = {"gsm8k_train": {"file_name": "mine.json", "formatting": "sharegpt"}, "other": {"file_name": "o.json"}}
    dataset_info.merge(out / "dataset_info.json", mine)
    write_jsonl(out / "mine.json", [{"conversations": []}])
    source = sample_dir("gsm8k")
    before = snapshot(out)
    assert prepare("--source", str(source), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "dataset_info.json entry 'gsm8k_train'" in err and "--overwrite" in err
    assert snapshot(out) == before and not leftovers(out)

    # a data file of the same name that the user wrote (no entry): refused after converting, nothing changed
    dataset_info.merge(out / "dataset_info.json", {}, remove=["gsm8k_train"])
    write_jsonl(out / "gsm8k_train.jsonl", [{"question": "mine", "answer": "#### 1"}])
    before = snapshot(out)
    assert prepare("--source", str(source), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert f"{out / 'gsm8k_train.jsonl'}" in err and "--overwrite" in err
    assert snapshot(out) == before and not leftovers(out)

    # --overwrite replaces it; a re-run of sftpack's own output is silent and byte-identical
    assert prepare("--source", str(source), "--out", str(out), "--overwrite") == 0
    first = snapshot(out)
    assert first["mine.json"] == before["mine.json"]
    assert dataset_info.load(out / "dataset_info.json")["other"] == mine["other"]
    assert prepare("--source", str(source), "--out", str(out)) == 0
    assert snapshot(out) == first

    # the user edits sftpack's file: it is theirs now
    with (out / "gsm8k_test.jsonl").open("a") as handle:
        handle.write(json.dumps({"question": "my extra", "answer": "#### 2"}) + "\n")
    before = snapshot(out)
    assert prepare("--source", str(source), "--out", str(out)) == 1
    assert "gsm8k_test.jsonl" in capsys.readouterr().err
    assert snapshot(out) == before


def test_names_folders_and_links_that_would_reach_user_data(tmp_path, capsys):
    out = tmp_path / "di"
    source = str(sample_dir("gsm8k"))
    assert prepare("--source", source, "--name", "../evil", "--out", str(out)) == 1
    assert "--name '../evil'" in capsys.readouterr().err and not (tmp_path / "evil_train.jsonl").exists()
    assert prepare("--source", source, "--splits", "train,train", "--out", str(out)) == 1
    assert "named twice" in capsys.readouterr().err
    (out / "gsm8k_train.jsonl").mkdir(parents=True)
    (out / "gsm8k_train.jsonl" / "keep.txt").write_text("mine\n")
    assert prepare("--source", source, "--out", str(out), "--overwrite") == 1
    assert "a folder where this run writes a file" in capsys.readouterr().err
    assert (out / "gsm8k_train.jsonl" / "keep.txt").read_text() == "mine\n"
    shutil.rmtree(out)
    theirs = write_jsonl(tmp_path / "theirs.jsonl", [{"question": "mine", "answer": "#### 1"}])
    kept = theirs.read_bytes()
    out.mkdir()
    (out / "gsm8k_train.jsonl").symlink_to(theirs)
    assert prepare("--source", source, "--out", str(out)) == 1
    assert "gsm8k_train.jsonl would be replaced" in capsys.readouterr().err
    assert prepare("--source", source, "--out", str(out), "--overwrite") == 0
    assert theirs.read_bytes() == kept, "--overwrite replaces the link, never the file it points to"


def test_identical_content_is_not_a_conflict(tmp_path):
    """A folder prepared before the manifest existed (same bytes) is re-prepared without --overwrite."""
    first, second = tmp_path / "a", tmp_path / "b"
    assert prepare("--source", str(sample_dir("gsm8k")), "--out", str(first)) == 0
    second.mkdir()
    for name in ("gsm8k_train.jsonl", "gsm8k_test.jsonl", "dataset_info.json"):
        shutil.copy(first / name, second / name)
    assert prepare("--source", str(sample_dir("gsm8k")), "--out", str(second)) == 0


def test_a_run_never_replaces_its_own_input(tmp_path, capsys):
    out = tmp_path / "dataset_info"
    data = write_jsonl(out / "mix.jsonl", SAMPLE_TRAIN[:20] + SAMPLE_TRAIN[:5])
    before = snapshot(out)
    same = write_recipe(tmp_path, GSM_RECIPE.format(path=data, name="mix"))
    assert recipe(str(same), "--out", str(out)) == 1
    assert "would replace its own input" in capsys.readouterr().err
    assert recipe(str(same), "--out", str(out), "--overwrite") == 1, "--overwrite never allows it"
    capsys.readouterr()
    globbed = write_recipe(tmp_path, GSM_RECIPE.format(path=out, name="mix2").replace(
        "path: '%s'}" % out, "path: '%s', glob: '*.jsonl'}" % out), "glob.yaml")
    assert recipe(str(globbed), "--out", str(out)) == 1
    assert "would be read as this input next time" in capsys.readouterr().err
    assert snapshot(out) == before, "the input must be byte-identical (it was rewritten 20 -> 5 rows before)"

    src = write_jsonl(tmp_path / "di" / "gsm8k_train.jsonl", SAMPLE_TRAIN[:10])
    before = snapshot(src.parent)
    assert prepare("--source", str(src), "--out", str(src.parent)) == 1
    assert "would replace its own input" in capsys.readouterr().err
    assert snapshot(src.parent) == before


def test_recipe_and_mixture_outputs_never_replace_user_files(tmp_path, capsys):
    out = tmp_path / "dataset_info"
    data = write_jsonl(tmp_path / "in" / "train.jsonl", SAMPLE_TRAIN[:30])
    write_jsonl(out / "dedup.jsonl", [{"question": "my own", "answer": "#### 3"}])
    (out / "dedup.stats.md").write_text("my notes\n")
    before = snapshot(out)
    path = write_recipe(tmp_path, GSM_RECIPE.format(path=data, name="dedup"))
    assert recipe(str(path), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "dedup.jsonl" in err and "dedup.stats.md" in err and "--overwrite" in err
    assert snapshot(out) == before and not leftovers(out)
    assert recipe(str(path), "--out", str(out), "--overwrite") == 0
    assert recipe(str(path), "--out", str(out)) == 0, "a re-run replaces its own outputs"

    mix = write_recipe(tmp_path, "mixture: {name: m, datasets: {dedup: 1, other: 1}, total: 10}\n", "mix.yaml")
    dataset_info.merge(out / "dataset_info.json", {"other": {"file_name": "dedup.jsonl"}})
    (out / "m.mix.yaml").write_text("# mine\n")
    before = snapshot(out)
    assert recipe(str(mix), "--out", str(out)) == 1
    assert "m.mix.yaml" in capsys.readouterr().err
    assert snapshot(out) == before


def test_tiny_model_refuses_a_model_it_did_not_build(tmp_path, tiny_model, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"model_type": "llama"}\n')
    (theirs / "model.safetensors").write_bytes(b"real weights")
    before = snapshot(theirs)
    assert main(["tiny-model", str(theirs)]) == 1
    err = capsys.readouterr().err
    assert "holds a model sftpack did not build" in err and "config.json" in err and "--overwrite" in err
    assert snapshot(theirs) == before and not leftovers(tmp_path)

    ours = tmp_path / "ours"
    shutil.copytree(tiny_model, ours)             # a model sftpack built (its marker says so)
    (ours / "notes.txt").write_text("my notes\n")
    (ours / "config.json").write_text((ours / "config.json").read_text() + " ")   # ...then edited by the user
    assert main(["tiny-model", str(ours)]) == 1
    assert "config.json" in capsys.readouterr().err
    assert main(["tiny-model", str(ours), "--overwrite"]) == 0
    assert (ours / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
    assert (ours / "notes.txt").read_text() == "my notes\n", "files that are not the model's are kept"
    assert main(["tiny-model", str(ours)]) == 0, "rebuilding its own model needs no flag"
    assert not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------- 2. stale, overlap


def mcq_folder(folder: Path, subjects: int = 2, per: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(subjects):
        lines = [",Question,A,B,C,D,Answer"]
        for q in range(per):
            options = ",".join(f"{o}{s}{q}" for o in "甲乙丙丁")
            lines.append(f"{q},科目{s}的第{q}个问题是什么,{options},{'ABCD'[q % 4]}")
        (folder / f"subject{s}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


MCQ_SPLIT = """\
seed: 3
inputs:
  - {{name: mcq, path: '{path}', glob: '*.csv', file_field: subject}}
steps:
  - mcq_augment: {{question: Question, answer: Answer, keep: [subject], shuffles: {shuffles}}}
{split}  - format: {{to: alpaca, instruction: instruction, output: output}}
output: {{name: mcq}}
"""


def test_a_rerun_removes_what_it_no_longer_writes_and_notes_near_duplicates(tmp_path, capsys):
    data = mcq_folder(tmp_path / "mcq")
    out = tmp_path / "dataset_info"
    dataset_info.merge(out / "dataset_info.json", {"mine": {"file_name": "mine.jsonl"}})
    split = write_recipe(tmp_path, MCQ_SPLIT.format(path=data, shuffles=3,
                                                    split="  - epoch_split: {by: subject, valid: 1, test: 1}\n"))
    assert recipe(str(split), "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "rows of mcq_train are near-duplicates of rows of mcq_test" in err   # the epoch split's design
    assert {"mcq_train", "mcq_valid", "mcq_test"} <= set(dataset_info.load(out / "dataset_info.json"))

    plain = write_recipe(tmp_path, MCQ_SPLIT.format(path=data, shuffles=0, split=""), "plain.yaml")
    assert recipe(str(plain), "--out", str(out)) == 0
    assert "removed what an earlier run of the same output wrote" in capsys.readouterr().err
    assert list(dataset_info.load(out / "dataset_info.json")) == ["mine", "mcq"]
    assert not any((out / f"mcq_{s}.jsonl").exists() for s in ("train", "valid", "test"))

    # a stale file the user changed is kept (and said so), not deleted
    assert recipe(str(split), "--out", str(out)) == 0
    with (out / "mcq_test.jsonl").open("a") as handle:
        handle.write('{"instruction": "mine", "output": "A"}\n')
    kept = (out / "mcq_test.jsonl").read_bytes()
    capsys.readouterr()
    assert recipe(str(plain), "--out", str(out)) == 0
    assert "kept mcq_test.jsonl" in capsys.readouterr().err
    assert (out / "mcq_test.jsonl").read_bytes() == kept


def test_train_eval_overlap_is_refused_unless_allowed(tmp_path, capsys):
    out = tmp_path / "dataset_info"
    assert prepare("--source", str(sample_dir("gsm8k")), "--splits", "test", "--out", str(out)) == 0
    leaked = [dict(r, question="  " + r["question"].upper() + " ") for r in SAMPLE_TEST[:3]]  # normalised: same
    source = write_jsonl(tmp_path / "train.jsonl", SAMPLE_TRAIN[:50] + leaked)
    before = snapshot(out)
    assert prepare("--source", str(source), "--name", "mine", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "3 rows of mine_train (training) have the prompt of a row of gsm8k_test (eval)" in err
    assert "--allow-overlap" in err and "line 51" in err
    assert snapshot(out) == before and not leftovers(out)
    assert prepare("--source", str(source), "--name", "mine", "--out", str(out), "--allow-overlap") == 0
    assert "overlap allowed" in capsys.readouterr().err

    # a recipe's training output against the registered eval set; and an eval set written after a train set
    path = write_recipe(tmp_path, GSM_RECIPE.format(path=source, name="dedup"))
    assert recipe(str(path), "--out", str(out)) == 1
    assert "rows of dedup (training) have the prompt of a row of gsm8k_test" in capsys.readouterr().err
    assert recipe(str(path), "--out", str(out), "--allow-overlap") == 0
    evalset = write_jsonl(tmp_path / "held" / "test.jsonl", SAMPLE_TRAIN[10:12] + SAMPLE_TEST[100:110])
    assert prepare("--source", str(evalset), "--name", "held", "--out", str(out)) == 1
    assert "have the prompt of a row of held_test (eval)" in capsys.readouterr().err


def test_overlap_check_cost_on_full_gsm8k(shared_data, tmp_path):
    """Not a timing assertion: the cost of the overlap check for the closing note (see -s)."""
    from sftpack import convert
    from sftpack.converters import CONVERTERS

    started = time.perf_counter()
    convert.prepare(CONVERTERS["gsm8k"], str(shared_data / "gsm8k"), tmp_path, progress=False)
    total = time.perf_counter() - started
    check = convert.check_overlap.last_seconds
    print(f"overlap check on full GSM8K (7,473 train x 1,319 test): {check:.3f} s of {total:.3f} s for prepare")
    assert check < total


# ---------------------------------------------------------------------------------------------- 3. locks


def test_six_concurrent_prepares_keep_all_six_entries(tmp_path):
    out = tmp_path / "shared"
    source = write_jsonl(tmp_path / "train.jsonl", SAMPLE_TRAIN[:200])
    procs = [subprocess.Popen([sys.executable, "-m", "sftpack", "prepare", "gsm8k", "--quiet", "--source",
                               str(source), "--name", f"n{i}", "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    assert [rc for rc, _ in results] == [0] * 6, results
    names = {f"n{i}_train" for i in range(6)}
    assert set(dataset_info.load(out / "dataset_info.json")) == names
    assert set(dataset_info.Manifest.load(out).entries) == names
    assert all((out / f"{n}.jsonl").read_bytes() == (out / "n0_train.jsonl").read_bytes() for n in names)
    assert not leftovers(out)


# ---------------------------------------------------------------------------------------------- 4. clean ends


SLOW = """\
import dataclasses, sys, time
from sftpack import converters
spec = converters.CONVERTERS["gsm8k"]
def slow(row):
    time.sleep(0.003)
    return spec.convert(row)
converters.CONVERTERS["gsm8k"] = dataclasses.replace(spec, convert=slow)
if sys.argv[1] == "recipe-workers":
    from sftpack.recipes.run import run_recipe
    try:
        run_recipe(sys.argv[2], sys.argv[3], workers=2, progress=False, min_parallel_bytes=0, chunk_bytes=1 << 15)
    except KeyboardInterrupt as err:
        sys.exit(getattr(err, "exit_code", 130))
    sys.exit(0)
from sftpack.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_slow(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "slow_sftpack.py"
    script.write_text(SLOW)
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"ended before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def processes_running(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_prepare_removes_its_temp_files(tmp_path, sig):
    out = tmp_path / "dataset_info"
    dataset_info.merge(out / "dataset_info.json", {"mine": {"file_name": "mine.jsonl"}})
    before = snapshot(out)
    proc = start_slow(tmp_path, "prepare", "gsm8k", "--quiet", "--source", str(sample_dir("gsm8k")), "--out",
                      str(out))
    wait_for(lambda: any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in out.iterdir()), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "interrupted" in err and "Traceback" not in err
    assert not leftovers(out) and snapshot(out) == before


def test_a_killed_prepare_leaves_temp_files_that_the_next_run_removes(tmp_path):
    out = tmp_path / "dataset_info"
    proc = start_slow(tmp_path, "prepare", "gsm8k", "--quiet", "--source", str(sample_dir("gsm8k")), "--out",
                      str(out))
    wait_for(lambda: out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()), proc)
    proc.kill()
    proc.communicate(timeout=60)
    left = leftovers(out)
    assert left and all(f".{proc.pid}." in name for name in left), left
    result = sftpack_proc("prepare", "gsm8k", "--quiet", "--source", str(sample_dir("gsm8k")), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "removed 1 temp file(s) of an earlier run" in result.stderr and left[0] in result.stderr
    assert not leftovers(out)


def test_sigterm_during_a_parallel_recipe_ends_its_workers_and_removes_its_workdir(tmp_path):
    out = tmp_path / "dataset_info"
    data = write_jsonl(tmp_path / "in" / "train.jsonl", SAMPLE_TRAIN * 2)
    path = write_recipe(tmp_path, GSM_RECIPE.format(path=data, name="dedup").replace(
        "path: '%s'}" % data, "path: '%s', converter: gsm8k}" % data))
    proc = start_slow(tmp_path, "recipe-workers", str(path), str(out))
    wait_for(lambda: out.is_dir() and any(p.name.startswith(".recipe-") and any(p.iterdir())
                                          for p in out.iterdir()), proc)
    assert len(processes_running(str(tmp_path / "slow_sftpack.py"))) >= 2, "the workers run"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    deadline = time.monotonic() + 10
    while processes_running(str(tmp_path / "slow_sftpack.py")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_running(str(tmp_path / "slow_sftpack.py")), "no worker outlives the recipe"
    assert not out.exists() or not leftovers(out)


# ---------------------------------------------------------------------------------------------- 5. meant


def arrow_file(path: Path, rows: list) -> Path:
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def test_a_split_is_read_from_an_unambiguous_name_only(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "dataset_info"
    lone = arrow_file(tmp_path / "export" / "gsm8k-test.arrow", SAMPLE_TEST[:20])
    assert prepare("--source", str(lone), "--out", str(out)) == 0
    assert list(dataset_info.load(out / "dataset_info.json")) == ["gsm8k_test"], "never silently gsm8k_train"

    shard = tmp_path / "repo" / "train-00000-of-00001.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(SAMPLE_TRAIN[:20]), shard)
    assert prepare("--source", str(shard), "--name", "repo", "--out", str(out)) == 0
    assert "repo_train" in dataset_info.load(out / "dataset_info.json")

    cache = tmp_path / "cache" / "openai___gsm8k" / "main" / "0.0.0" / "abc123"   # the `datasets` cache layout
    arrow_file(cache / "gsm8k-train.arrow", SAMPLE_TRAIN[:30])
    arrow_file(cache / "gsm8k-test.arrow", SAMPLE_TEST[20:30])
    (cache / "dataset_info.json").write_text("{}")
    assert prepare("--source", str(cache), "--name", "cached", "--out", str(out)) == 0
    assert len((out / "cached_test.jsonl").read_text().splitlines()) == 10

    saved = tmp_path / "saved" / "test"                                            # one split's save_to_disk
    arrow_file(saved / "data-00000-of-00001.arrow", SAMPLE_TEST[30:40])
    (saved / "state.json").write_text("{}")
    assert prepare("--source", str(saved), "--name", "saved", "--out", str(out)) == 0
    assert "saved_test" in dataset_info.load(out / "dataset_info.json")
    capsys.readouterr()

    before = snapshot(out)
    for name in ("mydata.jsonl", "train_test.jsonl"):
        source = write_jsonl(tmp_path / "plain" / name, SAMPLE_TRAIN[:5])
        assert prepare("--source", str(source), "--out", str(out)) == 1
        assert "--splits" in capsys.readouterr().err
    two = tmp_path / "hub"                     # GSM8K's repo: main/ and socratic/ both hold train-*.parquet
    for config in ("main", "socratic"):
        (two / config).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(SAMPLE_TRAIN[:5]), two / config / "train-00000-of-00001.parquet")
        pq.write_table(pa.Table.from_pylist(SAMPLE_TEST[:5]), two / config / "test-00000-of-00001.parquet")
    assert prepare("--source", str(two), "--out", str(out)) == 1
    assert "several sets of files hold split 'train'" in capsys.readouterr().err
    assert snapshot(out) == before


def test_skip_invalid_writes_every_skipped_row_and_respects_max_invalid(tmp_path, capsys):
    out = tmp_path / "dataset_info"
    rows = SAMPLE_TRAIN[:198] + [{"question": "q"}, {"question": "q", "answer": "no number"}]
    source = write_jsonl(tmp_path / "train.jsonl", rows)
    assert prepare("--source", str(source), "--out", str(out), "--skip-invalid") == 0     # 1.0 % <= 1 %
    skipped = [json.loads(line) for line in (out / "gsm8k_train.skipped.jsonl").read_text().splitlines()]
    assert [(s["where"], s["field"]) for s in skipped] == [("line 199", "answer"), ("line 200", "answer")]
    assert f"every skipped row and why: {out / 'gsm8k_train.skipped.jsonl'}" in capsys.readouterr().out
    before = snapshot(out)
    assert prepare("--source", str(source), "--out", str(out), "--max-invalid", "1") == 1
    assert "2 of 200 rows invalid (1.00%), more than --max-invalid 1 allows" in capsys.readouterr().err
    assert prepare("--source", str(source), "--out", str(out), "--max-invalid", "0.5%") == 1
    assert snapshot(out) == before
    assert prepare("--source", str(source), "--out", str(out), "--max-invalid", "abc") == 1
    assert "expected a number of rows" in capsys.readouterr().err
    write_jsonl(source, SAMPLE_TRAIN[:200])   # clean now: the old report goes with the re-run
    assert prepare("--source", str(source), "--out", str(out), "--skip-invalid") == 0
    assert not (out / "gsm8k_train.skipped.jsonl").exists()


# ---------------------------------------------------------------------------------------------- 6. a path


def test_a_path_is_a_path_and_never_goes_to_the_hub(tmp_path, monkeypatch, capsys):
    from sftpack import sources
    from sftpack.recipes import text as textlib
    from sftpack.recipes.schema import load_yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    for env in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(env, "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1")   # a hub request would hang here
    assert not sources.is_hub_id("data/train.jsonl") and not sources.is_hub_id("work/tinyy")
    assert not sources.is_hub_id("./runs/tiny-model") and sources.is_hub_id("openai/gsm8k")
    started = time.monotonic()
    for source in ("data/train.jsonl", "work/tinyy", "./runs/tiny-model"):
        assert prepare("--source", source, "--splits", "train", "--out", "di") == 1
        assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(Exception, match="no such file or folder"):
        textlib.load_tokenizer("./runs/tiny-model")
    path = write_recipe(tmp_path, GSM_RECIPE.format(path="work/tinyy", name="x"))
    assert recipe(str(path), "--out", "di") == 1
    assert "work/tinyy: no such file or folder" in capsys.readouterr().err
    rows = write_jsonl(tmp_path / "t.jsonl", SAMPLE_TRAIN[:5])
    tokenized = write_recipe(tmp_path, GSM_RECIPE.format(path=rows, name="y")
                             + "stats: {tokenizer: ./runs/tiny-model}\n", "t.yaml")
    assert recipe(str(tokenized), "--out", "di") == 1
    assert "tokenizer ./runs/tiny-model: no such file or folder" in capsys.readouterr().err
    assert time.monotonic() - started < 20, "no hub retries"
    assert not (tmp_path / "di").exists()
    shipped = Path(__file__).resolve().parent.parent / "dataset_info" / "recipes" / "gsm8k_dedup_budget.yaml"
    assert load_yaml(shipped).data["vars"]["tokenizer"].startswith("./")


# ---------------------------------------------------------------------------------------------- 7. OS errors


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "out.txt"
    blocker.write_text("my file\n")
    data = write_jsonl(tmp_path / "train.jsonl", SAMPLE_TRAIN[:5])
    recipe_path = write_recipe(tmp_path, GSM_RECIPE.format(path=data, name="x"))
    for args in (["prepare", "gsm8k", "--source", str(data), "--out", str(blocker)],
                 ["prepare", "gsm8k", "--source", str(data), "--out", str(blocker / "sub")],
                 ["recipe", str(recipe_path), "--out", str(blocker)],
                 ["tiny-model", str(blocker)]):
        line = one_line_error(sftpack_proc(*args))
        assert str(blocker) in line and "is a file" in line, line
    assert blocker.read_text() == "my file\n"


def test_a_folder_sftpack_cannot_write_is_one_line_and_unchanged(tmp_path):
    out = tmp_path / "dataset_info"
    dataset_info.merge(out / "dataset_info.json", {"mine": {"file_name": "mine.jsonl"}})
    before = snapshot(out)
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (an immutable folder) is not available here")
    try:
        result = sftpack_proc("prepare", "gsm8k", "--source", str(sample_dir("gsm8k")), "--out", str(out))
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    line = one_line_error(result)
    assert str(out) in line and "not permitted" in line.lower(), line
    assert snapshot(out) == before and not leftovers(out)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path):
    """A real full disk: a 256 KiB tmpfs in a private mount namespace (root), else a file-size limit."""
    data = sample_path("gsm8k", "train")           # 1,000 rows, ~600 KB converted: does not fit
    script = textwrap.dedent(f"""\
        set -e
        mount -t tmpfs -o size=256k tmpfs {tmp_path}/mnt
        mkdir {tmp_path}/mnt/di
        printf '{{"mine": {{"file_name": "mine.jsonl"}}}}\\n' > {tmp_path}/mnt/di/dataset_info.json
        sha256sum {tmp_path}/mnt/di/dataset_info.json > {tmp_path}/before
        set +e
        {sys.executable} -m sftpack prepare gsm8k --quiet --splits train --source {data} --out {tmp_path}/mnt/di \
            2> {tmp_path}/stderr
        echo $? > {tmp_path}/rc
        sha256sum {tmp_path}/mnt/di/dataset_info.json > {tmp_path}/after
        ls -A {tmp_path}/mnt/di > {tmp_path}/listing
    """)
    (tmp_path / "mnt").mkdir()
    ran = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if ran.returncode != 0 or not (tmp_path / "rc").exists():
        pytest.skip(f"no private tmpfs here ({ran.stderr.strip()[:80]})")
    stderr = (tmp_path / "stderr").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1", stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "No space left on device" in stderr and "mnt/di" in stderr
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()
    assert (tmp_path / "listing").read_text().split() in (["dataset_info.json"],
                                                          [".sftpack.lock", "dataset_info.json"])
