"""`sftpack sweep` and sftpack.stats.

    .venv/bin/python -m pytest tests/test_sweep.py -m "not integration"   # stats, schema, keys, report (~10 s)
    .venv/bin/python -m pytest tests/test_sweep.py                        # + the CPU example through the real CLIs

The integration test runs benchmarks/sweeps/cpu_example.yaml (tiny model, 3 questions; here 3 steps of batch 2 on 8
training rows: a cell's cost is the frameworks' and lm-eval's start-up, not its steps) with the smallest
grid that shows every part of a sweep: LLaMA-Factory with 2 learning rates x {LoRA, full} (a LoRA -> full transfer
needs two of each), ms-swift with one LoRA and one full cell on the same axes as LLaMA-Factory's (both frameworks'
configs for both methods, the paired framework comparison), plus one cell that fails; through
`python -m sftpack.sweep`: killed with SIGTERM after its first cell, resumed with --max-cells 2 (the finished cell is
not redone), then finished; the report has the table (Markdown, JSON, CSV), the plots, the paired framework section
and the transfer section, and the failed cell is recorded. (Transfer's grouping is the same code for every
framework: the synthetic report test checks it per framework, this one that real cells of both frameworks carry the
method and learning rate it groups on.)
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sftpack import frameworks as fw
from sftpack import stats
from sftpack.artifacts import write_json
from sftpack.pipeline.stages import read_done
from sftpack.sweep.report import write_report
from sftpack.sweep.run import plan_text, states
from sftpack.sweep.schema import SweepError, load_sweep

EXAMPLE = fw.REPO_ROOT / "benchmarks" / "sweeps" / "cpu_example.yaml"
MEASURED = fw.REPO_ROOT / "benchmarks" / "results" / "sweep_cpu"      # small_lr_cpu.yaml's cells, measured
SWEEPS = sorted((fw.REPO_ROOT / "benchmarks" / "sweeps").glob("*.yaml"))


# -- statistics -----------------------------------------------------------------------------------------------
def test_intervals_and_paired_tests_match_known_values():
    zero = stats.interval([0.0] * 40)       # Wilson 0/40: upper bound 3.84 / (40 + 3.84) = 0.0876
    assert zero.method == "wilson" and zero.low == 0.0 and zero.high == pytest.approx(0.08762, abs=1e-4)
    eight = stats.wilson(8, 10)              # the textbook example: [0.490, 0.943]
    assert (round(eight.low, 3), round(eight.high, 3)) == (0.49, 0.943)
    averaged = stats.interval([0.5, 1.0, 0.0, 1.0])   # not 0/1: bootstrap
    assert averaged.method == "bootstrap_percentile" and averaged.low <= 0.625 <= averaged.high
    mcnemar = stats.paired([1, 0, 1, 1, 0, 0, 0, 0, 0, 0], [1] * 10)   # 7 discordant, all one way: 2 / 2**7
    assert mcnemar.test == "mcnemar_exact" and mcnemar.p_value == pytest.approx(0.015625)
    assert (mcnemar.b_better, mcnemar.a_better, mcnemar.significant()) == (7, 0, True)
    same = stats.paired([1, 0, 1], [1, 0, 1])
    assert same.p_value == 1.0 and same.difference == 0 and same.significant() is False
    permutation = stats.paired([0.5, 0, 1, 1], [1, 1, 1, 0.5])
    assert permutation.test == "paired_permutation" and 0 < permutation.p_value <= 1
    assert stats.spearman([1, 2, 3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3], [0.0, 0.0, 0.0]) is None
    records = [{"doc_id": 0, "filter": "strict-match", "metrics": ["exact_match"], "exact_match": 1.0},
               {"doc_id": 1, "filter": "strict-match", "metrics": ["exact_match"], "exact_match": 0.0},
               {"doc_id": 0, "filter": "flexible-extract", "metrics": ["exact_match"], "exact_match": True}]
    assert stats.question_scores(records) == {"exact_match,strict-match": {0: 1.0, 1: 0.0}}
    assert stats.question_intervals(records)["exact_match,strict-match"] == stats.wilson(1, 2)


# -- schema and cells -------------------------------------------------------------------------------------------
def test_every_shipped_sweep_loads_and_opens_with_its_command():
    assert EXAMPLE in SWEEPS
    for path in SWEEPS:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("#") and "sftpack sweep benchmarks/sweeps/" + path.name in text, path
        load_sweep(path)


def test_the_example_expands_to_its_cells():
    sweep, cells = load_sweep(EXAMPLE)
    assert len(cells) == 8 and {c.framework for c in cells} == set(fw.FRAMEWORKS)
    lora = [c for c in cells if c.axes["method"] == "lora"]
    assert {c.train.overrides["learning_rate"] for c in lora} == {1.0e-3, 1.0e-2}
    assert all(c.train.overrides["max_steps"] == 4 and c.train.timeout_s == 600 for c in cells)
    assert {c.train.config for c in lora} == {"train_configs/qwen_gsm8k.yaml",
                                               "train_configs/swift/qwen_lora_gsm8k.yaml"}
    assert sweep.pipeline.model.build_shape == "tiny" and sweep.pipeline.eval.limit == 3
    assert cells[0].name == "llamafactory_lora_learning_rate-0.001"


def _write(tmp_path: Path, data: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _example(**changes) -> dict:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["base"] = str(EXAMPLE.parent / data["base"])
    data["configs"] = {m: {f: str(EXAMPLE.parent / p) for f, p in per.items()} for m, per in data["configs"].items()}
    data.update(changes)
    return data


def test_every_problem_of_a_sweep_is_named_at_once_with_its_line(tmp_path):
    data = _example(grid=[{"method": ["lora"], "learning_rate": ["1e-3"]},
                          {"method": ["full"], "lora_rank": [8]},
                          {"method": ["qlora"]}], seeds=[1, 1])
    data["overrides"]["axolotl"] = {}
    data["timeout"] = 5
    path = _write(tmp_path, data)
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    text = str(err.value)
    for expected in ("timeout: unknown key", "a number written as a string", "overrides.axolotl: unknown framework",
                     "seeds: give distinct seeds", "grid[2].method[0]: no config for this method"):
        assert expected in text, text
    assert all(p.line is not None for p in err.value.problems)
    data = _example(grid=[{"method": ["full"], "lora_rank": [8]}])   # a LoRA key on a full training
    with pytest.raises(SweepError, match=r"sweep\.yaml:\d+: grid\[0\].overrides.lora_rank: a LoRA key"):
        load_sweep(_write(tmp_path, data))


def test_keys_skip_finished_cells_and_rerun_changed_or_failed_ones(tmp_path):
    sweep, cells = load_sweep(EXAMPLE)
    found = states(sweep, cells, tmp_path)
    assert all(s.reason == "not run here before" for s in found)
    for state, status in zip(found[:2], ("ok", "timeout")):
        write_json(tmp_path / "cells" / state.cell.name / "done.json",
                   {"key": state.plan.key, "inputs": state.plan.inputs, "reads": state.plan.reads, "status": status})
    (tmp_path / "cells" / found[2].cell.name).mkdir()    # started, never finished
    again = states(sweep, cells, tmp_path)
    assert [s.reason for s in again[:2]] == [None, None]
    assert again[2].reason.startswith("started before but not finished")
    assert states(sweep, cells, tmp_path, retry_failed=True)[1].reason.endswith("--retry-failed")
    changed = _example()
    changed["overrides"]["llamafactory"]["max_steps"] = 5
    sweep2, cells2 = load_sweep(_write(tmp_path, changed))
    moved = states(sweep2, cells2, tmp_path)
    assert "spec changed (train.overrides.max_steps: 4 -> 5)" in moved[0].reason
    assert moved[2 if cells2[2].framework == "swift" else 3].reason is not None
    text = plan_text(sweep, again, tmp_path)
    assert "skip (done, unchanged)" in text and "--retry-failed runs it" in text and "6 of 8 cells would run" in text


# -- the report, from synthetic cells ------------------------------------------------------------------------------
def _fake_cells(tmp_path: Path, scores: dict[str, list[int]]) -> tuple:
    """Cells of the example with given per-question format-rate scores (the same 20 questions)."""
    sweep, cells = load_sweep(EXAMPLE)
    found = states(sweep, cells, tmp_path)
    records = []
    for state in found:
        cell = state.cell
        values = scores.get(cell.name)
        record = {"cell": cell.name, "group": cell.group, "axes": cell.axes, "framework": cell.framework,
                  "normalised": {"method": cell.axes["method"],
                                 "learning_rate": cell.train.overrides["learning_rate"]},
                  "key": state.plan.key, "status": "ok" if values else "timeout",
                  "status_detail": None if values else "killed after the run's timeout of 600 s",
                  "train": {"wall_s": 10.0 + len(records), "final_loss": 1.0, "peak_rss_largest_process_mib": 800.0},
                  "eval_wall_s": 5.0}
        if values:
            questions = {"task": "gsm8k-local-chat", "doc_hashes": {str(i): f"h{i}" for i in range(len(values))},
                         "scores": {"format_rate,strict-match": {str(i): float(v) for i, v in enumerate(values)},
                                    "exact_match,strict-match": {str(i): 0.0 for i in range(len(values))}}}
            write_json(tmp_path / "cells" / cell.name / "questions.json", questions)
            record["questions"] = "questions.json"
        records.append(record)
    return sweep, records


def test_report_ranks_compares_and_answers_the_transfer_question(tmp_path):
    ones, zeros = [1] * 20, [0] * 20
    scores = {"llamafactory_lora_learning_rate-0.001": [1] * 8 + [0] * 12,
              "llamafactory_lora_learning_rate-0.01": [1] * 18 + [0] * 2,
              "llamafactory_full_learning_rate-0.0001": [1] * 4 + [0] * 16,
              "llamafactory_full_learning_rate-0.001": [1] * 17 + [0] * 3,
              "swift_lora_learning_rate-0.001": zeros, "swift_lora_learning_rate-0.01": ones,
              "swift_full_learning_rate-0.0001": [1] * 16 + [0] * 4}   # swift full 1e-3: timed out
    sweep, records = _fake_cells(tmp_path, scores)
    paths = write_report(sweep, records, tmp_path)
    table = json.loads(paths["table"].read_text(encoding="utf-8"))
    rows = {r["cell"]: r for r in table["rows"]}
    assert rows["llamafactory_lora_learning_rate-0.01"]["best_of_framework"]
    assert rows["llamafactory_full_learning_rate-0.001"]["near_best"] is True        # 18 vs 17 of 20: n.s.
    assert rows["llamafactory_lora_learning_rate-0.001"]["vs_best"]["significant"] is True
    assert rows["swift_full_learning_rate-0.001"]["status"] == "timeout"
    primary = rows["llamafactory_lora_learning_rate-0.01"]["primary"]
    assert primary["method"] == "wilson" and primary["low"] < 0.9 < primary["high"]
    lf = next(t for t in table["transfer"] if t["group"]["framework"] == "llamafactory")
    assert lf["spearman"] == pytest.approx(1.0) and lf["best_lr_ratio_lora_over_full"] == pytest.approx(10.0)
    assert lf["lora_best_in_full_band"] is True
    assert lf["full_near_best_band"] == ["llamafactory_full_learning_rate-0.001"]
    assert not any(t["group"]["framework"] == "swift" for t in table["transfer"])   # one full lr finished
    pair = next(p for p in table["framework_pairs"] if p["axes"] == {"method": "lora", "learning_rate": 0.001})
    assert pair["test"] == "mcnemar_exact" and pair["significant"] is True
    report = paths["report"].read_text(encoding="utf-8")
    for expected in ("## Transfer: LoRA -> full fine-tuning", "## Frameworks on the same cell (paired)",
                     "n.s.", "## Cells not ok", "swift_full_learning_rate-0.001: timeout"):
        assert expected in report
    with (tmp_path / "report" / "table.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 8
    assert (tmp_path / "report" / "score.png").stat().st_size > 1000
    assert (tmp_path / "report" / "cost.png").stat().st_size > 1000


def test_the_committed_cpu_measurement_is_rebuilt_from_its_cells(tmp_path):
    """benchmarks/results/sweep_cpu/report/ is what `--report-only` makes of the committed cells (no drift)."""
    if not (MEASURED / "report").is_dir():
        pytest.skip(f"no committed measurement in {MEASURED}")
    shutil.copytree(MEASURED, tmp_path / "r")
    sweep, cells = load_sweep(fw.REPO_ROOT / "benchmarks" / "sweeps" / "small_lr_cpu.yaml")
    records = [read_done(tmp_path / "r" / "cells", cell.name) for cell in cells]
    assert all(records), "every cell of small_lr_cpu.yaml is committed"
    write_report(sweep, records, tmp_path / "r")
    for name in ("report.md", "table.md", "table.csv", "table.json"):
        assert (tmp_path / "r" / "report" / name).read_text(encoding="utf-8") == \
            (MEASURED / "report" / name).read_text(encoding="utf-8"), name


def test_plan_prints_the_cells_and_the_estimated_time(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sftpack.sweep", str(EXAMPLE), "--plan", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("| run: not run here before |") == 8
    assert "8 of 8 cells would run: estimated" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "sftpack.sweep", str(tmp_path / "none.yaml"), "--plan"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("sftpack: error:") and "no such sweep file" in bad.stderr


# -- the CPU example through the real CLIs -------------------------------------------------------------------------
def _done(out: Path, cell: str) -> Path:
    return out / "cells" / cell / "done.json"


@pytest.mark.integration
def test_cpu_example_runs_is_killed_resumes_and_records_a_failed_cell(tmp_path, env):
    """The example's base, overrides, eval and configs on 6 cells + 1 failing (the shipped grid's 8 cells, less the
    2 Swift cells that would only repeat a transfer already shown by LLaMA-Factory's 4)."""
    data = _example(grid=[{"framework": ["llamafactory"], "method": ["lora"], "learning_rate": [1.0e-3, 1.0e-2]},
                          {"framework": ["llamafactory"], "method": ["full"], "learning_rate": [1.0e-4, 1.0e-3]},
                          {"framework": ["swift"], "method": ["lora"], "learning_rate": [1.0e-3]},
                          {"framework": ["swift"], "method": ["full"], "learning_rate": [1.0e-4]},
                          {"framework": ["llamafactory"], "method": ["lora"], "learning_rate": [1.0e-3],
                           "lr_scheduler_type": ["no_such_schedule"]}])    # fails at LF's argument parsing
    # Less work per cell than the shipped example (which stays as it is): 8 training rows tokenised instead of 1,000
    # (LF max_samples, Swift's `#8` sampling of the base's dataset), 3 steps of batch 2 (step 1 is warm-up at lr 0: with 3 the last logged
    # loss follows a step at the cell's learning rate); still a loss per step and a saved model.
    data["overrides"]["llamafactory"].update(max_steps=3, per_device_train_batch_size=2, max_samples=8)
    data["overrides"]["swift"].update(max_steps=3, per_device_train_batch_size=2, dataset=["gsm8k_equations#8"])
    sweep_file = _write(tmp_path, data)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sftpack.sweep", str(sweep_file), "--out", str(out)]
    first, second = "llamafactory_lora_learning_rate-0.001", "llamafactory_lora_learning_rate-0.01"

    log = (tmp_path / "run1.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 400
    # the second cell's training log: written just before its process starts; 1 s later it is importing
    while not (out / "cells" / second / "train_llamafactory" / "stdout.log").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run1.log").read_text()
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert _done(out, first).is_file() and not _done(out, second).exists()
    finished_at = _done(out, first).stat().st_mtime_ns

    resumed = subprocess.run(cmd + ["--max-cells", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"{first} -- unchanged, skipped" in resumed.stdout
    assert f"{second} -- started before but not finished" in resumed.stdout
    assert "2 cell(s) ran" in resumed.stdout and "4 left (--max-cells)" in resumed.stdout
    assert _done(out, first).stat().st_mtime_ns == finished_at

    final = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert final.returncode == 1, final.stdout[-3000:] + final.stderr[-3000:]   # the failing cell
    assert _done(out, first).stat().st_mtime_ns == finished_at
    table = json.loads((out / "report" / "table.json").read_text(encoding="utf-8"))
    status = {r["cell"]: r["status"] for r in table["rows"]}
    assert len(status) == 7 and status.pop(
        "llamafactory_lora_learning_rate-0.001_lr_scheduler_type-no_such_schedule") == "failed"
    assert set(status.values()) == {"ok"}
    ok = [row for row in table["rows"] if row["status"] == "ok"]
    assert {(row["framework"], row["method"]) for row in ok} == {(f, m) for f in fw.FRAMEWORKS for m in ("lora", "full")}
    for row in ok:
        assert row["primary"]["n"] == 3 and row["primary"]["method"] == "wilson"
        assert row["train_wall_s"] > 0 and row["peak_rss_mib"] > 0 and row["final_loss"] is not None
        assert row["learning_rate"] == row["axes"]["learning_rate"]     # what transfer groups on, both frameworks
        assert json.loads(_done(out, row["cell"]).read_text(encoding="utf-8"))["train"]["steps"] == 3
    (lf,) = table["transfer"]   # Swift has one learning rate per method here: no transfer to compute
    assert lf["group"]["framework"] == "llamafactory"
    assert lf["lora_learning_rates"] == [1.0e-3, 1.0e-2] and lf["full_learning_rates"] == [1.0e-4, 1.0e-3]
    assert {tuple(sorted(p["axes"].items())) for p in table["framework_pairs"]} == {
        (("learning_rate", 1.0e-3), ("method", "lora")), (("learning_rate", 1.0e-4), ("method", "full"))}
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    for expected in ("## Transfer: LoRA -> full fine-tuning", "## Frameworks on the same cell (paired)", "| 7 |"):
        assert expected in report, expected
    for name in ("table.md", "table.csv", "score.png", "cost.png"):
        assert (out / "report" / name).is_file(), name
    rebuilt = subprocess.run(cmd + ["--report-only"], capture_output=True, text=True, env=env, timeout=120)
    assert rebuilt.returncode == 0 and (out / "report" / "report.md").read_text(encoding="utf-8") == report
    assert not any(p.name == "cache" for p in out.glob("cells/*/*")), "caches are removed after each cell"
    assert os.environ.get("SFTPACK_KEEP_CACHE") is None
