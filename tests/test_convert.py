"""`sftpack prepare gsm8k`: every source format, idempotence, user entries kept, and bad input.

Bad input must give one clear error naming file, line and field, exit non-zero, and leave dataset_info/
exactly as it was (no data file, no temp file, the user's entries byte-identical).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftpack.answer import extract_answer
from sftpack.cli import main
from sftpack.samples import sample_path

GOOD = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
USER_INFO = {"my_data": {"file_name": "mine.json", "formatting": "sharegpt", "file_sha1": "kept-as-is"}}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture
def out(tmp_path) -> Path:
    """A dataset_info/ folder that already holds a user's own entry."""
    folder = tmp_path / "dataset_info"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps(USER_INFO, indent=2) + "\n")
    return folder


def prepare(*args: str) -> int:
    return main(["prepare", "gsm8k", "--quiet", *args])


def test_extract_answer_is_the_upstream_regex():
    assert extract_answer("so 1,072 total\n#### 1,072") == "1072"
    assert extract_answer("#### -3.5") == "-3.5"
    assert extract_answer("The answer is 7.") is None


def test_full_gsm8k_converts_keeps_user_entries_and_is_idempotent(shared_data, out, capsys):
    assert prepare("--source", str(shared_data / "gsm8k"), "--out", str(out)) == 0
    info = json.loads((out / "dataset_info.json").read_text())
    assert list(info) == ["my_data", "gsm8k_train", "gsm8k_test"]
    assert info["my_data"] == USER_INFO["my_data"]
    assert info["gsm8k_train"] == {"file_name": "gsm8k_train.jsonl", "formatting": "alpaca",
                                   "columns": {"prompt": "question", "response": "answer"}}
    assert sum(1 for _ in (out / "gsm8k_train.jsonl").open()) == 7473
    assert sum(1 for _ in (out / "gsm8k_test.jsonl").open()) == 1319
    from sftpack.artifacts import file_mode

    for name in ("dataset_info.json", "gsm8k_train.jsonl"):
        assert (out / name).stat().st_mode & 0o777 == file_mode(), f"{name}: mode as a plain open() gives"
    first = snapshot(out)
    assert prepare("--source", str(shared_data / "gsm8k"), "--out", str(out)) == 0
    assert snapshot(out) == first, "running twice must give the same bytes"
    assert "7473 rows" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "arrow_folder", "hub_parquet_layout"])
def test_local_formats_give_identical_files(fmt, tmp_path):
    import datasets

    rows = [json.loads(line) for line in sample_path("gsm8k", "test").read_text().splitlines()[:50]]
    held = [json.loads(line) for line in sample_path("gsm8k", "train").read_text().splitlines()[:5]]  # no overlap
    src = tmp_path / "src"
    src.mkdir()
    if fmt == "jsonl":
        source = write_jsonl(src / "train.jsonl", rows)
    elif fmt == "json":
        source = src / "train.json"
        source.write_text(json.dumps(rows))
    elif fmt == "parquet":
        source = src / "train.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(source))
    elif fmt == "arrow_folder":  # what load_dataset(...).save_to_disk writes
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                              "test": datasets.Dataset.from_list(held)}).save_to_disk(str(src / "saved"))
        source = src / "saved"
    else:  # openai/gsm8k's own repo layout: main/train-00000-of-00001.parquet
        (src / "main").mkdir()
        datasets.Dataset.from_list(rows).to_parquet(str(src / "main" / "train-00000-of-00001.parquet"))
        datasets.Dataset.from_list(held).to_parquet(str(src / "main" / "test-00000-of-00001.parquet"))
        source = src
    out = tmp_path / "dataset_info"
    assert prepare("--source", str(source), "--out", str(out)) == 0
    written = [json.loads(line) for line in (out / "gsm8k_train.jsonl").read_text().splitlines()]
    assert written == [{"question": r["question"], "answer": r["answer"]} for r in rows]


BAD_CASES = {
    "malformed_json": (b'{"question": "q", "answer": "a\\n#### 1"}\n{"question": oops}\n', "line 2", None,
                       "not valid JSON"),
    "missing_field": (json.dumps({"question": "q"}).encode() + b"\n", "line 1", "answer", "missing"),
    "not_a_string": (json.dumps({"question": 12, "answer": "#### 1"}).encode() + b"\n", "line 1", "question",
                     "must be a string"),
    "no_final_answer": (json.dumps({"question": "q", "answer": "it is 4"}).encode() + b"\n", "line 1",
                        "answer", "#### <number>"),
    "bad_utf8": (json.dumps(GOOD).encode() + b"\n" + b'{"question": "caf\xe9", "answer": "#### 1"}\n', "line 2",
                 None, "not valid UTF-8"),
    "empty_file": (b"", None, None, "file is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_line_field_and_changes_nothing(case, out, tmp_path, capsys):
    content, where, field, problem = BAD_CASES[case]
    source = tmp_path / "bad.jsonl"
    source.write_bytes(content)
    before = snapshot(out)
    assert prepare("--source", str(source), "--out", str(out), "--splits", "train") == 1
    err = capsys.readouterr().err
    assert str(source) in err and problem in err
    if where:
        assert where in err
    if field:
        assert f"field '{field}'" in err
    assert snapshot(out) == before, "dataset_info/ must be untouched"


def test_skip_invalid_reports_count_and_lines(out, tmp_path, capsys):
    rows = [GOOD, {"question": "q"}, GOOD, {"question": "q", "answer": "no number"}, GOOD]
    source = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert prepare("--source", str(source), "--out", str(out), "--splits", "train") == 1
    before = snapshot(out)
    assert prepare("--source", str(source), "--out", str(out), "--splits", "train", "--skip-invalid") == 1
    assert "2 of 5 rows invalid (40.00%), more than --max-invalid 1% allows" in capsys.readouterr().err
    assert snapshot(out) == before, "above --max-invalid nothing is written"
    assert prepare("--source", str(source), "--out", str(out), "--splits", "train", "--max-invalid", "2") == 0
    printed = capsys.readouterr().out
    assert "skipped 2 invalid rows: line 2 (answer); line 4 (answer)" in printed
    assert f"every skipped row and why: {out / 'gsm8k_train.skipped.jsonl'}" in printed
    assert len((out / "gsm8k_train.jsonl").read_text().splitlines()) == 3
    skipped = [json.loads(line) for line in (out / "gsm8k_train.skipped.jsonl").read_text().splitlines()]
    assert [(s["where"], s["field"], s["row"]) for s in skipped] == [("line 2", "answer", rows[1]),
                                                                    ("line 4", "answer", rows[3])]


def test_malformed_dataset_info_is_reported_and_kept(tmp_path, capsys):
    out = tmp_path / "dataset_info"
    out.mkdir()
    (out / "dataset_info.json").write_text('{"mine": {"file_name": "a.json"},\n  oops}\n')
    before = snapshot(out)
    assert prepare("--source", str(write_jsonl(tmp_path / "t.jsonl", [GOOD])), "--out", str(out)) == 1
    assert "line 2" in capsys.readouterr().err
    assert snapshot(out) == before


def test_unreachable_hub_gives_one_clear_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sftpack", "prepare", "gsm8k", "--source", "openai/gsm8k",
                             "--out", str(tmp_path / "di"), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot load 'openai/gsm8k'" in result.stderr and "--source PATH" in result.stderr
    assert "modelscope/gsm8k" in result.stderr
    assert not (tmp_path / "di").exists(), "a failed first run leaves no folder behind"


def test_unknown_entry_key_is_an_error_listing_allowed():
    from sftpack import dataset_info
    from sftpack.errors import SftpackError

    with pytest.raises(SftpackError, match=r"unknown keys \['fromatting'\].*Expected: \['hf_hub_url'"):
        dataset_info.validate_entry("x", {"file_name": "x.json", "fromatting": "sharegpt"})
    with pytest.raises(SftpackError, match=r"unknown columns keys \['answer'\]"):
        dataset_info.validate_entry("x", {"file_name": "x.json", "columns": {"prompt": "q", "answer": "a"}})
    with pytest.raises(SftpackError, match=r"must name \['prompt'\]"):
        dataset_info.validate_entry("x", {"file_name": "x.json", "columns": {"response": "a"}})
    # prompt without response: pretraining text, as LLaMA-Factory's own c4_demo entry (stage: pt)
    dataset_info.validate_entry("x", {"file_name": "x.json", "columns": {"prompt": "text"}})


def test_converter_speed_on_full_train_file(shared_data, tmp_path, capsys):
    """Not a timing assertion: prints rows/s for the closing note (see -s / the -ra summary)."""
    from sftpack.convert import prepare as run
    from sftpack.converters import CONVERTERS

    (result,) = run(CONVERTERS["gsm8k"], str(shared_data / "gsm8k" / "train.jsonl"), tmp_path, progress=False)
    assert result.rows_out == 7473
    print(f"converter: {result.rows_per_s:,.0f} rows/s on GSM8K train ({result.seconds:.3f} s)")
