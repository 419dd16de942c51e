"""The first-run and format-rate benchmarks: every committed report.md is what its result.json rebuilds, and the
format-rate collector reads a run's summary and names what its pipeline changed against the shipped one."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["first_run", "format_rate_cpu"])
def test_committed_reports_are_rebuilt_from_their_results(name, tmp_path):
    bench = _load(name)
    sessions = sorted((REPO / "benchmarks" / "results" / name).glob("*/result.json"))
    assert sessions, f"no committed {name} result"
    for result in sessions:
        copy = tmp_path / result.parent.name
        copy.mkdir()
        shutil.copy(result, copy / "result.json")
        assert bench.main(["--report", str(copy)]) == 0
        assert (copy / "report.md").read_text() == (result.parent / "report.md").read_text(), result


def test_format_rate_rows_name_the_changed_overrides(tmp_path):
    bench = _load("format_rate_cpu")
    spec = yaml.safe_load((REPO / "benchmarks" / "pipelines" / "tiny_cpu.yaml").read_text(encoding="utf-8"))
    spec["train"][1]["overrides"].update(learning_rate=1.2e-2, adam_beta2=0.95)
    pipeline = tmp_path / "variant.yaml"
    pipeline.write_text(yaml.safe_dump(spec), encoding="utf-8")
    run = tmp_path / "runs" / "B"
    (run / "report").mkdir(parents=True)
    train = {"framework": "swift", "first_loss": 8.0, "final_loss": 3.2, "steps": 600, "wall_s": 300.0,
             "trained_model": str(tmp_path / "gone")}
    summary = {"pipeline": {"path": str(pipeline)}, "train": {"llamafactory": {**train, "framework": "llamafactory"},
                                                              "swift": train},
               "eval": {"base_label": "base", "values": {"base": {bench.FORMAT: 0.0},
                                                         "llamafactory": {bench.FORMAT: 0.9, bench.STRICT: 0.025},
                                                         "swift": {bench.FORMAT: 0.05, bench.STRICT: 0.0}}}}
    (run / "report" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    out = tmp_path / "result"
    assert bench.main([str(run), "--nll", "40", "--out", str(out)]) == 0    # a model folder that is gone: no NLL
    rows = json.loads((out / "result.json").read_text())["rows"]
    assert [(r["framework"], r["changes"], r["format_rate"], r["answer_nll"]) for r in rows] == [
        ("llamafactory", {}, 0.9, None), ("swift", {"adam_beta2": 0.95, "learning_rate": 0.012}, 0.05, None)]
    assert "| B | swift | adam_beta2=0.95, learning_rate=0.012 | 5.0 % | 0.0 % | 8.00 -> 3.20 |" in (
        out / "report.md").read_text()
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path / "runs")])       # no report/summary.json there: one line, exit 2
