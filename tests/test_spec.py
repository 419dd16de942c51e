"""The one spec mechanism (sftpack.spec) behind pipeline and suite files: strict types, ranges, choices, unknown
keys, files, eval task names, LoRA keys and step counts, all checked before any work, every error naming
file:line and key; `sftpack run --check` / `sftpack bench --check`.

    .venv/bin/python -m pytest tests/test_spec.py        # seconds: no framework runs, nothing is trained
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sftpack import frameworks as fw
from sftpack import spec
from sftpack.bench.suite import SuiteError, load_suite
from sftpack.pipeline.schema import PipelineError, load_pipeline

PY = sys.executable
PIPELINES = sorted((fw.REPO_ROOT / "benchmarks" / "pipelines").glob("*.yaml"))
SUITES = sorted((fw.REPO_ROOT / "benchmarks" / "suites").glob("*.yaml"))

# One valid file of each kind; each case below replaces one line (the line numbers are the point).
PIPELINE = """\
# a valid pipeline: each case changes one line
name: spec_test
requires_gpu: false
model: {path: null, build_shape: tiny, seed: 0}
data: {family: gsm8k, source: sample}
train:
  - framework: llamafactory
    config: train_configs/qwen_full_gsm8k.yaml
    timeout_s: 60
    overrides: {max_steps: 2, logging_steps: 1}
  - framework: swift
    config: train_configs/swift/qwen_full_gsm8k.yaml
    timeout_s: 60
    overrides: {max_steps: 2, logging_steps: 1}
eval:
  tasks: [gsm8k-local-chat]
  limit: 2
"""
SUITE = """\
# a valid suite: each case changes one line
description: spec test
model: {build_shape: tiny}
dataset: {family: gsm8k, source: sample}
overhead: {run: lf_lora, repeats: 0}
defaults:
  presets: [tiny_cpu]
  repeats: 1
  timeout_s: 60
  gpus: 0
runs:
  - name: lf_lora
    framework: llamafactory
    config: train_configs/qwen_gsm8k.yaml
    group: lora
    overrides: {max_steps: 2, save_steps: 2, logging_steps: 1}
  - name: swift_lora
    framework: swift
    config: train_configs/swift/qwen_lora_gsm8k.yaml
    group: lora
    overrides: {max_steps: 2, save_steps: 2, logging_steps: 1}
"""


def _write(tmp_path: Path, text: str, changes: dict[int, str], name: str = "spec.yaml") -> Path:
    lines = text.splitlines()
    for number, line in changes.items():
        lines[number - 1] = line
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


PIPELINE_CASES = {   # case: (line changed, new line, the error's start after "FILE:")
    "typo'd task": (16, "  tasks: [gsm8k-locl-chat]",
                    "16: eval.tasks[0]: unknown eval task (got 'gsm8k-locl-chat')"),
    "string boolean": (3, 'requires_gpu: "false"',
                       "3: requires_gpu: wrong type (got the string 'false'); expected true or false"),
    "non-numeric timeout": (9, "    timeout_s: fast",
                            "9: train[0].timeout_s: wrong type (got the string 'fast'); expected a number > 0"),
    "missing config": (12, "    config: train_configs/swift/nope.yaml",
                       "12: train[1].config: no such file (got 'train_configs/swift/nope.yaml'; resolved: "),
    "string for a list": (16, "  tasks: gsm8k-local-chat",
                          "16: eval.tasks: wrong type (got the string 'gsm8k-local-chat'); expected a list of strings"),
    "unknown key": (17, "  limits: 2", "17: eval.limits: unknown key (did you mean 'limit'?); expected one of "),
    "out of range": (17, "  limit: 0", ("17: eval.limit: out of range (got 0); expected an integer >= 1 (questions "
                                        "per task; null = the whole test split)")),
    "LoRA key without LoRA": (10, "    overrides: {max_steps: 2, logging_steps: 1, lora_rank: 8}",
                              "10: train[0].overrides.lora_rank: a LoRA key, but this training's method is 'full'"),
    "max_steps < logging_steps": (14, "    overrides: {max_steps: 2, logging_steps: 5}",
                                  "14: train[1].overrides.max_steps: max_steps is less than logging_steps"),
}
SUITE_CASES = {
    # suites name no eval task: their names that must exist are presets, frameworks, families and overhead.run
    "typo'd preset": (7, "  presets: [tiny_cpux]",
                      ("7: defaults.presets[0]: unknown value (got 'tiny_cpux'); expected one of 'tiny_cpu'; "
                       "did you mean 'tiny_cpu'?")),
    "typo'd run name": (5, "overhead: {run: lf_lroa, repeats: 0}",
                        ("5: overhead.run: not a run of this suite (got 'lf_lroa'); expected one of 'lf_lora', "
                         "'swift_lora'; did you mean 'lf_lora'?")),
    # suites have no boolean key: a quoted "false" where a count is expected is the same mistake
    "string boolean": (10, '  gpus: "false"',
                       "10: defaults.gpus: wrong type (got the string 'false'); expected an integer >= 0"),
    "boolean for a count": (8, "  repeats: true", "8: defaults.repeats: wrong type (got the boolean true)"),
    "non-numeric timeout": (9, "  timeout_s: fast",
                            "9: defaults.timeout_s: wrong type (got the string 'fast'); expected a number > 0"),
    "missing config": (19, "    config: train_configs/swift/nope.yaml",
                       "19: runs[1].config: no such file (got 'train_configs/swift/nope.yaml'; resolved: "),
    "string for a list": (7, "  presets: tiny_cpu",
                          ("7: defaults.presets: wrong type (got the string 'tiny_cpu'); expected a list of strings, "
                           "e.g. [tiny_cpu]")),
    "unknown key": (15, "    grop: lora", "15: runs[0].grop: unknown key (did you mean 'group'?); expected one of "),
    "out of range": (9, "  timeout_s: -1", "9: defaults.timeout_s: out of range (got -1); expected a number > 0"),
    "LoRA key without LoRA": (21, "    overrides: {max_steps: 2, logging_steps: 1, tuner_type: full, lora_rank: 8}",
                              "21: runs[1].overrides.lora_rank: a LoRA key, but this training's method is 'full'"),
    "max_steps < logging_steps": (16, "    overrides: {max_steps: 2, save_steps: 2, logging_steps: 5}",
                                  "16: runs[0].overrides.max_steps: max_steps is less than logging_steps"),
}


@pytest.mark.parametrize("case", PIPELINE_CASES)
def test_pipeline_mistake_names_file_line_and_key(tmp_path, case):
    line, text, expected = PIPELINE_CASES[case]
    path = _write(tmp_path, PIPELINE, {line: text})
    with pytest.raises(PipelineError) as err:
        load_pipeline(path)
    assert str(err.value).startswith(f"{path}:{expected}"), str(err.value)
    assert len(err.value.problems) == 1, str(err.value)


@pytest.mark.parametrize("case", SUITE_CASES)
def test_suite_mistake_names_file_line_and_key(tmp_path, case):
    line, text, expected = SUITE_CASES[case]
    path = _write(tmp_path, SUITE, {line: text})
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert str(err.value).startswith(f"{path}:{expected}"), str(err.value)
    assert len(err.value.problems) == 1, str(err.value)


def test_the_valid_files_load(tmp_path):
    pipeline = load_pipeline(_write(tmp_path, PIPELINE, {}))
    assert [t.timeout_s for t in pipeline.train] == [60, 60] and pipeline.eval.tasks == ["gsm8k-local-chat"]
    suite = load_suite(_write(tmp_path, SUITE, {}))
    assert suite.name == "spec" and suite.defaults.presets == ["tiny_cpu"] and suite.overhead.run == "lf_lora"


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([PY, "-m", "sftpack", *args], capture_output=True, text=True, cwd=fw.REPO_ROOT,
                          check=False)
    return done, time.monotonic() - started


def test_run_check_lists_every_problem_in_under_5_s_and_runs_nothing(tmp_path):
    changes = {line: text for line, text, _ in PIPELINE_CASES.values()}
    del changes[16]   # one change per line: the typo'd task, not the string
    changes[15] = "eval: {tasks: [gsm8k-locl-chat], limit: 0}"
    changes[16] = changes[17] = "#"
    path = _write(tmp_path, PIPELINE, changes)
    out = tmp_path / "out"
    done, seconds = _cli("run", str(path), "--check", "--out", str(out))
    assert done.returncode == 1 and seconds < 5, (seconds, done.stdout, done.stderr)
    for key in ("3: requires_gpu", "9: train[0].timeout_s", "10: train[0].overrides.lora_rank",
                "12: train[1].config", "15: eval.tasks[0]: unknown eval task", "15: eval.limit: out of range"):
        assert f"{path}:{key}" in done.stderr, (key, done.stderr)
    assert "(nothing was run)" in done.stderr and not out.exists()
    # without --check the same file stops before the first stage: no output folder at all
    done, seconds = _cli("run", str(path), "--out", str(out))
    assert done.returncode == 1 and seconds < 5 and f"{path}:3: requires_gpu" in done.stderr and not out.exists()


def test_run_check_prints_the_stages_of_a_valid_pipeline(tmp_path):
    out = tmp_path / "out"
    done, seconds = _cli("run", str(_write(tmp_path, PIPELINE, {})), "--check", "--out", str(out))
    assert done.returncode == 0 and seconds < 5, done.stderr
    assert "is valid; nothing was run" in done.stdout and not out.exists()
    for stage in ("model", "data", "train_llamafactory", "train_swift", "eval", "report"):
        assert f". {stage} " in done.stdout, done.stdout


def test_bench_check_lists_every_problem_in_under_5_s_and_runs_nothing(tmp_path):
    changes = {9: "  timeout_s: fast", 10: '  gpus: "false"', 15: "    grop: lora",
               19: "    config: train_configs/swift/nope.yaml"}
    path = _write(tmp_path, SUITE, changes)
    results, work = tmp_path / "results", tmp_path / "work"
    done, seconds = _cli("bench", str(path), "--check", "--results", str(results), "--work", str(work))
    assert done.returncode == 1 and seconds < 5, (seconds, done.stdout, done.stderr)
    assert "4 problems in" in done.stderr
    for key in ("9: defaults.timeout_s", "10: defaults.gpus", "15: runs[0].grop", "19: runs[1].config"):
        assert f"{path}:{key}" in done.stderr, (key, done.stderr)
    done, seconds = _cli("bench", str(path), "--results", str(results), "--work", str(work))
    assert done.returncode == 1 and seconds < 5 and not results.exists() and not work.exists(), done.stderr
    done, _ = _cli("bench", str(_write(tmp_path, SUITE, {}, "ok.yaml")), "--check")
    assert done.returncode == 0 and "is valid; nothing was run" in done.stdout, done.stderr


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_shipped_pipeline_passes_check(path):
    done, _ = _cli("run", str(path), "--check")
    assert done.returncode == 0 and "is valid" in done.stdout, done.stderr


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_every_shipped_suite_loads(path):
    """Loading does not need the GPU kit's tokenizer (a fresh clone has none): `--plan`/`--check` and runs check it."""
    suite = load_suite(path)
    assert suite.runs and suite.path == path.resolve()


def test_set_values_are_checked_and_say_set():
    path = fw.REPO_ROOT / "benchmarks" / "suites" / "gpu_quick.yaml"
    with pytest.raises(SuiteError) as err:
        load_suite(path, ["defaults.gpus=two"])
    assert str(err.value).startswith(f"{path} (--set): defaults.gpus: wrong type (got the string 'two')")
    # lf_full trains full-parameter: a LoRA key in the defaults every LF run gets is refused, at its --set
    with pytest.raises(SuiteError) as err:
        load_suite(path, ["defaults.llamafactory.lora_rank=8"])
    assert str(err.value).startswith(f"{path} (--set): defaults.llamafactory.lora_rank: a LoRA key, but this "
                                     "training's method is 'full'"), str(err.value)


def test_merge_keys_and_anchors_keep_the_line_of_the_value(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("""\
model: {build_shape: tiny}
defaults:
  llamafactory: &common
    max_steps: 2
    logging_steps: 5
  swift:
    <<: *common
    max_steps: 10
runs:
  - {name: a, framework: llamafactory, config: train_configs/qwen_gsm8k.yaml, group: g}
  - {name: b, framework: swift, config: train_configs/swift/qwen_lora_gsm8k.yaml, group: g}
""", encoding="utf-8")
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    # Swift's own max_steps (line 8) wins over the merged 2, so only LLaMA-Factory's defaults are refused
    assert str(err.value) == (f"{path}:4: defaults.llamafactory.max_steps: max_steps is less than logging_steps: no "
                              "loss would be logged (got max_steps 2, logging_steps 5); expected max_steps >= "
                              "logging_steps")
    text = path.read_text().replace("    max_steps: 10\n", "")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SuiteError) as err:     # now Swift gets max_steps 2 through the merge: the anchor's line
        load_suite(path)
    assert [(p.line, p.key) for p in err.value.problems] == [(4, "defaults.llamafactory.max_steps"),
                                                             (4, "defaults.swift.max_steps")]


def test_invalid_yaml_and_a_list_at_the_top_name_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {build_shape: tiny\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=rf"^{bad}:3: not valid YAML"):
        load_pipeline(bad)
    bad.write_text("- name: x\n", encoding="utf-8")
    with pytest.raises(SuiteError, match=rf"^{bad}:1: \(top level\): wrong type \(got a list"):
        load_suite(bad)


# -- the mechanism itself ---------------------------------------------------------------------------------------
@dataclass
class _Inner:
    names: list[str] = spec.key(factory=list)


@dataclass
class _Spec:
    count: int = spec.key(1, ge=1)
    ratio: float = spec.key(0.5, gt=0, le=1)
    flag: bool = False
    mode: str = spec.key("a", choices=("a", "b"))
    label: str | None = None
    inner: _Inner = spec.key(factory=_Inner)
    extra: dict[str, int] = spec.key(factory=dict)


@pytest.mark.parametrize("data, expected", [
    ({"count": "2"}, "count: wrong type (got the string '2'); expected an integer >= 1"),
    ({"count": True}, "count: wrong type (got the boolean true)"),
    ({"count": 2.5}, "count: wrong type (got the number 2.5)"),
    ({"count": 0}, "count: out of range (got 0)"),
    ({"ratio": 2}, "ratio: out of range (got 2); expected a number > 0 and <= 1"),
    ({"flag": "false"}, "flag: wrong type (got the string 'false'); expected true or false (unquoted)"),
    ({"flag": 1}, "flag: wrong type (got the integer 1)"),
    ({"mode": "c"}, "mode: unknown value (got 'c'); expected one of 'a', 'b'"),
    ({"label": 3}, "label: wrong type (got the integer 3); expected a string or null"),
    ({"inner": {"names": "x"}}, "inner.names: wrong type (got the string 'x'); expected a list of strings, e.g. [x]"),
    ({"inner": {"names": ["x", 2]}}, "inner.names[1]: wrong type (got the integer 2); expected a string"),
    ({"inner": ["x"]}, "inner: wrong type (got a list ['x']); expected a mapping with the keys names"),
    ({"extra": {"a": "1"}}, "extra.a: wrong type (got the string '1'); expected an integer"),
    ({"colour": 1}, "colour: unknown key; expected one of count, ratio, flag, mode, label, inner, extra"),
])
def test_strict_types_ranges_choices_and_keys(data, expected):
    with pytest.raises(spec.SpecError) as err:
        spec.build(_Spec, data, spec.Doc("t.yaml"), spec.SpecError)
    assert str(err.value) == f"t.yaml: {expected}" or str(err.value).startswith(f"t.yaml: {expected}"), str(err.value)


def test_valid_values_pass_unchanged():
    built = spec.build(_Spec, {"count": 3, "ratio": 1, "label": None, "inner": None, "extra": {"a": 1}},
                       spec.Doc("t.yaml"), spec.SpecError)
    assert (built.count, built.ratio, built.label, built.inner.names, built.extra) == (3, 1, None, [], {"a": 1})
