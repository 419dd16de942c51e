"""`sftpack eval` (sftpack.evaluate): commands per backend, report building, the errors users hit, and a real run of
the tiny base model plus one LoRA adapter from each framework.

    .venv/bin/python -m pytest tests/test_evaluate.py                        # ~1.5 min on 2 cores
    .venv/bin/python -m pytest tests/test_evaluate.py -m "not integration"   # ~15 s, no training, no model runs

Offline. The integration tests read two session fixtures (conftest.py): `lora_runs`, a 4-step LoRA adapter of the
tiny model from `llamafactory-cli train` and from `swift sft` (shipped configs, GSM8K train split), and
`adapter_eval`, one `python -m sftpack eval` of the base model and both adapters on the GSM8K sample shipped in the
package (real lm-eval runs, --limit 3; test_integration reads lm-eval's own results of the same runs). The
retention tasks (two CMMLU subjects from ../shared/data/cmmlu) join that run when the data is there. The vLLM test
skips unless vLLM and a CUDA GPU are present.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from sftpack import frameworks as fw
from sftpack.answer import ANSWER_RE, extract_answer
from sftpack.errors import SftpackError
from sftpack.cli import main as sftpack_main
from sftpack.evaluate import cli, results
from sftpack.evaluate.models import EvalModel, default_label, plan, same_model, split_label, vllm_max_lora_rank
from sftpack.evaluate.runner import Settings, lm_eval_command, model_args

REPO = Path(__file__).resolve().parents[1]
CMMLU = REPO.parent / "shared" / "data" / "cmmlu"
HAS_CMMLU = (CMMLU / "test").is_dir()
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _adapter(folder: Path, base: str, rank: int = 16) -> Path:
    """An adapter folder as far as sftpack's checks read it (adapter_config.json only)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": rank,
                                                            "peft_type": "LORA"}))
    return folder


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


# ------------------------------------------------------------------------------------ models and their checks


def test_labels():
    assert default_label("saves/lf-lora") == "lf-lora"
    assert default_label("saves/swift-lora/checkpoint-30/") == "swift-lora-checkpoint-30"
    assert split_label("lf=saves/x") == ("lf", "saves/x")
    assert split_label("saves/a=b/x") == (None, "saves/a=b/x")
    with pytest.raises(SftpackError, match="may use only letters"):
        EvalModel(label="a b", kind="base", path="m")


def test_same_model():
    assert same_model("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B")
    assert not same_model("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-7B")
    assert same_model(str(REPO), str(REPO / "eval_tasks" / ".."))                   # one folder, two spellings
    assert not same_model(str(REPO / "eval_tasks"), str(REPO / "train_configs"))   # two local folders
    assert same_model("Qwen/eval_tasks", str(REPO / "eval_tasks"))                 # a local copy of a hub model


def test_plan_checks_adapters_and_bases(tmp_path):
    base = _model(tmp_path / "base")
    other = _model(tmp_path / "other")
    lora = _adapter(tmp_path / "runs" / "lora", str(base), rank=12)
    merged = _model(tmp_path / "runs" / "merged")
    models = plan(str(base), [f"mine={lora}", str(merged)])
    assert [(m.label, m.kind) for m in models] == [("base", "base"), ("mine", "adapter"), ("merged", "merged")]
    assert models[1].base == str(base.resolve()) and models[1].lora_rank == 12
    assert [m.label for m in plan(str(base), [str(lora)], include_base=False)] == ["lora"]

    with pytest.raises(SftpackError, match=r"trained on '.*base', but --model is '.*other'.*--skip-base-check"):
        plan(str(other), [str(lora)])
    assert plan(str(other), [str(lora)], skip_base_check=True)[1].kind == "adapter"
    with pytest.raises(SftpackError, match="is a LoRA adapter .* --tuned"):
        plan(str(lora), [])
    with pytest.raises(SftpackError, match="has no config.json"):
        plan(str(tmp_path / "runs"), [])
    with pytest.raises(SftpackError, match="no such folder"):
        plan(str(base), [str(tmp_path / "missing")])
    with pytest.raises(SftpackError, match="two models get the label 'lora'"):
        plan(str(base), [str(lora), f"lora={merged}"])
    swift_out = tmp_path / "swift-out"
    _adapter(swift_out / "checkpoint-5", str(base))
    _adapter(swift_out / "checkpoint-10", str(base))
    with pytest.raises(SftpackError, match=r"no adapter_config.json .* did you mean --tuned .*checkpoint-10 "):
        plan(str(base), [str(swift_out)])
    assert plan("Qwen/Qwen2.5-1.5B", [], backend="local-completions")[0].kind == "served"


# ------------------------------------------------------------------------------------------ commands per backend


def test_hf_commands():
    settings = Settings(tasks=["gsm8k-local", "gsm8k-local-chat"], limit=5, device="cpu", dtype="float32",
                        gen_kwargs="max_gen_toks=64", metadata={"cmmlu_dir": "/data/cmmlu"}, extra_args=["--seed", "1"])
    adapter = EvalModel("lf", "adapter", "/runs/lf", base="/models/base", lora_rank=16)
    cmd = lm_eval_command(adapter, settings, Path("/out"), num_fewshot=8)
    # every task in the task folders: lm-eval's own CLI without its built-in task index; else the plain script
    assert cmd[:3] == [sys.executable, "-m", "sftpack.evaluate.lm_eval_local"]
    plain = lm_eval_command(adapter, settings, Path("/out"), num_fewshot=8, plain=True)
    builtin = lm_eval_command(adapter, replace(settings, builtin_tasks=["hellaswag"]), Path("/out"), num_fewshot=8)
    assert Path(plain[0]).name == Path(builtin[0]).name == "lm_eval" and plain[1:] == builtin[1:] == cmd[3:]
    assert cmd[cmd.index("--model") + 1] == "hf"
    assert cmd[cmd.index("--model_args") + 1] == "pretrained=/models/base,peft=/runs/lf,dtype=float32"
    assert cmd[cmd.index("--tasks") + 1] == "gsm8k-local,gsm8k-local-chat"
    assert cmd[cmd.index("--include_path") + 1] == str(fw.EVAL_TASKS)
    assert cmd[cmd.index("--num_fewshot") + 1] == "8" and cmd[cmd.index("--limit") + 1] == "5"
    assert json.loads(cmd[cmd.index("--metadata") + 1]) == {"cmmlu_dir": "/data/cmmlu"}
    assert "--log_samples" in cmd and cmd[-2:] == ["--seed", "1"]
    merged = EvalModel("full", "merged", "/runs/full")
    assert model_args(merged, Settings()) == "pretrained=/runs/full"
    assert model_args(merged, Settings(extra_model_args="parallelize=True")) == "pretrained=/runs/full,parallelize=True"
    multi = lm_eval_command(merged, Settings(num_processes=4), Path("/out"), None)
    assert [Path(multi[0]).name] + multi[1:6] == ["accelerate", "launch", "--num_processes", "4", "-m",
                                                  "sftpack.evaluate.lm_eval_local"]
    multi = lm_eval_command(merged, Settings(num_processes=4), Path("/out"), None, plain=True)
    assert [Path(multi[0]).name] + multi[1:6] == ["accelerate", "launch", "--num_processes", "4", "-m", "lm_eval"]
    assert "--num_fewshot" not in multi and "--device" not in multi


def test_vllm_commands():
    settings = Settings(backend="vllm", data_parallel_size=2, dtype="bfloat16", batch_size="auto")
    adapter = EvalModel("swift", "adapter", "/runs/swift/checkpoint-9", base="Qwen/Qwen2.5-1.5B", lora_rank=12)
    assert model_args(adapter, settings) == ("pretrained=Qwen/Qwen2.5-1.5B,lora_local_path=/runs/swift/checkpoint-9,"
                                             "max_lora_rank=16,dtype=bfloat16,data_parallel_size=2")
    assert [vllm_max_lora_rank(r) for r in (1, 8, 9, 64, 320, 512)] == [8, 8, 16, 64, 320, 512]
    with pytest.raises(SftpackError, match="above vLLM's largest"):
        vllm_max_lora_rank(1024)
    with pytest.raises(SftpackError, match="vLLM settings"):
        Settings(data_parallel_size=2)
    with pytest.raises(SftpackError, match="for the hf backend"):
        Settings(backend="vllm", num_processes=2)


def test_local_completions_commands():
    with pytest.raises(SftpackError, match="needs --base-url"):
        Settings(backend="local-completions")
    settings = Settings(backend="local-completions", base_url="http://localhost:8000/v1/completions",
                        tokenizer="Qwen/Qwen2.5-1.5B", num_concurrent=4)
    served = plan("Qwen/Qwen2.5-1.5B", ["lf"], backend="local-completions")
    assert model_args(served[1], settings) == ("model=lf,base_url=http://localhost:8000/v1/completions,"
                                               "num_concurrent=4,tokenizer=Qwen/Qwen2.5-1.5B,"
                                               "tokenizer_backend=huggingface")
    with pytest.raises(SftpackError, match="cannot contain one"):
        model_args(EvalModel("x", "merged", "/a,b"), Settings())


def test_cli_arguments_become_settings():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", "m", "--tuned", "a", "b", "--tuned", "c", "--num-fewshot", "0,5",
                              "--limit", "0.5", "--cmmlu-dir", ".", "--metadata", '{"x": 1}',
                              "--lm-eval-args", "--seed 3 --write_out", "--model-args", "max_length=64"])
    settings = cli.settings_from_args(args)
    assert args.tuned == ["a", "b", "c"] and args.func is cli.cmd_eval
    assert settings.num_fewshot == [0, 5] and settings.limit == 0.5
    assert settings.metadata == {"x": 1, "cmmlu_dir": str(Path(".").resolve())}
    assert settings.extra_args == ["--seed", "3", "--write_out"] and settings.extra_model_args == "max_length=64"
    assert settings.tasks == ["gsm8k-local", "gsm8k-local-chat"]
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--model", "m", "--num-fewshot", "five"])


# ----------------------------------------------------------------------------------- report and format rate


def test_format_rate_and_combine():
    assert results.format_rate([]) == (None, None)
    assert results.format_rate(["#### 5"]) == (1.0, None)
    rate, stderr = results.format_rate(["x\n#### 1,000", "#### -2.5", "The answer is 3.", "####4"])
    assert rate == 0.5 and stderr == pytest.approx((1 / 3 / 4) ** 0.5)  # sample variance / n, as lm-eval
    rows = results.combine({
        "base": [{"task": "t", "n_shot": 5, "filter": "f", "metric": "m", "value": 0.25, "stderr": 0.1,
                  "higher_is_better": True}],
        "lf": [{"task": "t", "n_shot": 5, "filter": "f", "metric": "m", "value": 0.75, "stderr": 0.1,
                "higher_is_better": True},
               {"task": "u", "n_shot": 0, "filter": "none", "metric": "acc", "value": 0.5, "stderr": None,
                "higher_is_better": True}],
    }, base_label="base")
    assert rows[0]["delta"] == {"lf": 0.5} and rows[1]["values"] == {"lf": {"value": 0.5, "stderr": None, "ci": None}}
    assert rows[1]["delta"] == {}
    report = {"models": [{"label": "base", "kind": "base", "path": "m", "runs": [{"wall_s": 1.0}]},
                         {"label": "lf", "kind": "adapter", "path": "a", "base": "m", "runs": [{"wall_s": 2.0}]}],
              "base_label": "base", "rows": rows, "environment": {"lm_eval": "0.4.13", "git_sha": "abc"},
              "settings": {"tasks": ["t", "u"], "backend": "hf", "limit": 5, "num_fewshot": None}}
    table = results.render_markdown(report)
    assert "| Task | n-shot | Filter | Metric | base | ± | lf | ± | Δ lf |" in table
    assert "| t | 5 | f | m ↑ | 0.2500 | 0.1000 | 0.7500 | 0.1000 | +0.5000 |" in table
    assert "| u | 0 | none | acc ↑ | — | — | 0.5000 | — | — |" in table


def test_values_carry_intervals_and_deltas_a_paired_test(tmp_path):
    """From lm-eval's samples files: each value gets its 95 % Wilson interval over the questions, each delta to the
    base an exact McNemar test on the same questions; the table marks a non-significant delta `n.s.`."""
    def run(label: str, hits: list[int]) -> results.RunOutput:
        samples = tmp_path / f"samples_{label}.jsonl"
        samples.write_text("".join(json.dumps({"doc_id": i, "filter": "strict-match", "metrics": ["exact_match"],
                                               "exact_match": float(h), "resps": [["#### 1" if h else "no"]]}) + "\n"
                                   for i, h in enumerate(hits)), encoding="utf-8")
        config = {"output_type": "generate_until", "filter_list": [{"name": "strict-match", "filter": [
            {"function": "regex", "regex_pattern": ANSWER_RE.pattern}]}]}
        return results.RunOutput(tmp_path / "r.json", {
            "results": {"t": {"exact_match,strict-match": sum(hits) / len(hits)}}, "n-shot": {"t": 0},
            "configs": {"t": config}}, {"t": samples})

    base, tuned, same = [0] * 20 + [1] * 10, [1] * 28 + [0] * 2, [0] * 19 + [1] * 11
    rows = results.combine({"base": results.metric_rows(run("base", base)),
                            "lf": results.metric_rows(run("lf", tuned)),
                            "swift": results.metric_rows(run("swift", same))}, base_label="base")
    exact = next(r for r in rows if r["metric"] == "exact_match")
    ci = exact["values"]["base"]["ci"]
    assert ci["method"] == "wilson" and ci["low"] == pytest.approx(0.1923, abs=1e-4)   # Wilson 10/30
    assert ci["high"] == pytest.approx(0.5121, abs=1e-4)
    assert exact["paired"]["lf"]["test"] == "mcnemar_exact" and exact["paired"]["lf"]["significant"]
    assert exact["paired"]["lf"]["b_better"] == 20 and exact["paired"]["lf"]["a_better"] == 2
    assert exact["paired"]["swift"]["significant"] is False
    fmt = next(r for r in rows if r["metric"] == results.FORMAT_RATE)
    assert fmt["values"]["lf"]["value"] == pytest.approx(28 / 30) and fmt["paired"]["lf"]["significant"]
    report = {"models": [{"label": x, "kind": "k", "path": "p", "runs": [{"wall_s": 1.0}]} for x in
                         ("base", "lf", "swift")], "base_label": "base", "rows": rows, "environment": {},
              "settings": {"tasks": ["t"], "backend": "hf", "limit": 30, "num_fewshot": None}}
    table = results.render_markdown(report)
    assert "0.3333 [0.19, 0.51]" in table and "+0.0333 n.s." in table and "+0.6000 (p=" in table


@pytest.fixture(scope="module")
def gsm8k_task(tmp_path_factory, sample_workdir):
    """lm-eval's gsm8k-local task over the shipped GSM8K sample (hubs off, caches in a temporary folder)."""
    import datasets
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("gsm8k_task")
    (root / "dataset_info").symlink_to(sample_workdir / "dataset_info")   # the shared prepared sample, read-only
    patch = pytest.MonkeyPatch()
    env = fw.offline_env(root / "cache", base={})
    for key, value in env.items():
        patch.setenv(key, value)
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(env["HF_DATASETS_CACHE"]))
    patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    patch.chdir(root)
    manager = TaskManager(include_defaults=False, include_path=str(fw.EVAL_TASKS))
    yield SimpleNamespace(root=root, manager=manager)
    patch.undo()


@pytest.mark.xdist_group("gsm8k_task")   # one lm-eval task index in memory: one worker with --dist loadgroup
def test_format_rate_regex_is_lm_evals_strict_match(gsm8k_task):
    """extract_answer finds an answer exactly when lm-eval's strict-match filter does, for both gsm8k tasks."""
    from lm_eval.tasks._yaml_loader import load_yaml

    outputs = ["Natalia sold 48/2 = 24 clips in May.\n#### 72", "#### 1,072", "#### -3.5", "#### $5", "####5",
               "The answer is 18.", "#### ", "x #### 12 and #### 13", "72", "\n#### 7\n\nQuestion: next"]
    for name, expected in (("gsm8k-local", True), ("gsm8k-local-chat", True), ("gsm8k-local-cot", False)):
        assert results.uses_answer_regex(load_yaml(fw.EVAL_TASKS / f"{name}.yaml", resolve_func=False)) == expected
    task = next(iter(gsm8k_task.manager.load(["gsm8k-local-chat"])["tasks"].values()))
    task.build_all_requests(limit=len(outputs), rank=0, world_size=1)
    for inst, text in zip(task.instances, outputs, strict=True):
        inst.resps = [text]
    task.apply_filters()
    lm_eval_found = [inst.filtered_resps["strict-match"] != "[invalid]" for inst in task.instances]
    ours_found = [extract_answer(text) is not None for text in outputs]
    assert ours_found == lm_eval_found
    assert 0 < sum(ours_found) < len(outputs)
    assert ANSWER_RE.pattern == "#### (\\-?[0-9\\.\\,]+)"


def test_a_group_naming_builtin_tasks_runs_the_plain_lm_eval(sample_workdir, tmp_path):
    """A group in an added task folder whose members include lm-eval's built-in tasks: its built-in members are
    found (so `sftpack eval` runs the plain `lm_eval`, which indexes them); a member that is nowhere is an error
    naming the group's file, not a KeyError."""
    from sftpack.evaluate.tasks import check_tasks

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mixed.yaml").write_text("group: my-mixed\ntask:\n  - gsm8k-local\n  - arc_easy\n")
    (mine / "broken.yaml").write_text("group: my-broken\ntask:\n  - gsm8k-local\n  - no_such_task_xyz\n")
    found = []
    assert check_tasks(["my-mixed"], [fw.EVAL_TASKS, mine], sample_workdir, found_builtin=found) == {
        "my-mixed": ["gsm8k-local", "arc_easy"]} and found == ["arc_easy"]
    cmd = lm_eval_command(EvalModel("base", "base", "/m"), Settings(tasks=["my-mixed"], builtin_tasks=found),
                          Path("/out"), None)
    assert Path(cmd[0]).name == "lm_eval"
    with pytest.raises(SftpackError, match=r"group my-broken .*broken.yaml.*\['no_such_task_xyz'\]: not in"):
        check_tasks(["my-broken"], [fw.EVAL_TASKS, mine], sample_workdir)


@pytest.mark.xdist_group("gsm8k_task")
def test_task_errors_name_the_fix(gsm8k_task, tmp_path):
    from sftpack.evaluate.tasks import check_tasks

    leaves = check_tasks(["gsm8k-local", "gsm8k-local-chat"], fw.EVAL_TASKS, gsm8k_task.root)
    assert leaves == {"gsm8k-local": ["gsm8k-local"], "gsm8k-local-chat": ["gsm8k-local-chat"]}
    with pytest.raises(SftpackError) as err:
        check_tasks(["gsm8k-locl"], fw.EVAL_TASKS, gsm8k_task.root)
    assert "unknown task(s) ['gsm8k-locl']" in str(err.value)
    assert "gsm8k-local-chat" in str(err.value) and "cmmlu-local (group of 67 tasks" in str(err.value)
    found = []    # a built-in task: lm-eval's CLI must index its own tasks to run it (runner.lm_eval_command)
    assert check_tasks(["hellaswag", "gsm8k-local"], fw.EVAL_TASKS, gsm8k_task.root, found_builtin=found) == {
        "hellaswag": ["hellaswag"], "gsm8k-local": ["gsm8k-local"]} and found == ["hellaswag"]
    with pytest.raises(SftpackError, match=r"reads dataset_info/gsm8k_train.jsonl.* does not exist; create it with "
                                           r"`sftpack prepare gsm8k --source openai/gsm8k --out "):
        check_tasks(["gsm8k-local-chat"], fw.EVAL_TASKS, tmp_path)
    with pytest.raises(SftpackError, match="--cmmlu-dir"):
        check_tasks(["cmmlu-local-agronomy"], fw.EVAL_TASKS, gsm8k_task.root)
    with pytest.raises(SftpackError, match="which has no test/ folder"):
        check_tasks(["cmmlu-local"], fw.EVAL_TASKS, gsm8k_task.root, {"cmmlu_dir": str(tmp_path)})


# ------------------------------------------------------------------ the real thing: tiny model + two adapters


@pytest.fixture
def trained(lora_runs, sample_workdir, env) -> SimpleNamespace:
    """conftest's `lora_runs` (a 4-step LoRA adapter of the tiny model from each framework) with the folder
    `sftpack eval` reads GSM8K from (root, the shared prepared sample: read-only) and the environment."""
    return SimpleNamespace(root=sample_workdir, env=env, model=lora_runs.model, lf=lora_runs.lf,
                           swift_out=lora_runs.swift_out, swift=lora_runs.swift)


@pytest.mark.integration
def test_sftpack_eval_base_and_both_adapters(trained, adapter_eval):
    """conftest's `adapter_eval`: `sftpack eval --model TINY --tuned lf=LF swift=SWIFT --tasks gsm8k-local,
    gsm8k-local-chat[,cmmlu-local-agronomy,cmmlu-local-anatomy] --limit 3 --gen-kwargs max_gen_toks=32`."""
    tasks, out, done = adapter_eval.tasks, adapter_eval.out, adapter_eval.done
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    print((out / "eval.md").read_text(encoding="utf-8"))

    models = {m["label"]: m for m in report["models"]}
    assert list(models) == ["base", "lf", "swift"] and report["base_label"] == "base"
    assert models["lf"]["kind"] == models["swift"]["kind"] == "adapter"
    assert models["lf"]["path"] == str(trained.lf) and models["swift"]["path"] == str(trained.swift)
    assert models["lf"]["base"] == str(trained.model)
    for label in ("lf", "swift"):
        run = models[label]["runs"][0]
        assert f"peft={models[label]['path']}" in run["command"][run["command"].index("--model_args") + 1]
        assert (out / "logs" / f"{label}-default-shots.log").read_text().startswith("$ ")

    rows = {(r["task"], r["filter"], r["metric"]): r for r in report["rows"]}
    for task in tasks:  # every task has a row for every model ...
        assert any(key[0] == task for key in rows), task
    for row in report["rows"]:
        assert set(row["values"]) == {"base", "lf", "swift"}, row
        for label in ("lf", "swift"):  # ... and the delta is the difference to the base model
            assert row["delta"][label] == pytest.approx(row["values"][label]["value"] - row["values"]["base"]["value"])
    assert {k[0]: r["n_shot"] for k, r in rows.items()} == {"gsm8k-local": 5, "gsm8k-local-chat": 0,
                                                            **{t: 0 for t in tasks[2:]}}

    for label, model in models.items():  # the table holds lm-eval's own numbers
        run = model["runs"][0]
        lm_eval_results = json.loads(Path(run["results_file"]).read_text())["results"]
        for task, metrics in lm_eval_results.items():
            for key, value in metrics.items():
                if "," in key and "_stderr" not in key:
                    metric, flt = key.split(",", 1)
                    assert rows[(task, flt, metric)]["values"][label]["value"] == value
        for task in ("gsm8k-local", "gsm8k-local-chat"):  # format rate = lm-eval's strict-match found an answer
            samples = [json.loads(line) for line in open(run["samples_files"][task], encoding="utf-8")]
            strict = [s for s in samples if s["filter"] == "strict-match"]
            assert len(strict) == 3
            expected = sum(s["filtered_resps"][0] != "[invalid]" for s in strict) / 3
            assert rows[(task, "strict-match", "format_rate")]["values"][label]["value"] == expected
    assert not any(k[2] == "format_rate" for k in rows if k[0].startswith("cmmlu"))

    if HAS_CMMLU:  # the adapters were really applied: their log-likelihoods differ from the base model's
        def loglikelihoods(label):
            path = models[label]["runs"][0]["samples_files"]["cmmlu-local-agronomy"]
            return [s["resps"] for s in map(json.loads, open(path, encoding="utf-8"))]
        assert loglikelihoods("lf") != loglikelihoods("base") != loglikelihoods("swift")
    table = (out / "eval.md").read_text(encoding="utf-8")
    assert table == results.render_markdown(report)
    assert "| Task | n-shot | Filter | Metric | base | ± | lf | ± | Δ lf | swift | ± | Δ swift |" in table


@pytest.mark.integration
def test_sftpack_eval_errors_on_real_training_outputs(trained, capsys, tmp_path):
    def fails(*argv) -> str:
        assert sftpack_main(["eval", "--model", str(trained.model), "--workdir", str(trained.root),
                             "--out", str(tmp_path / "eval-errors"), *argv]) == 1
        return capsys.readouterr().err

    err = fails("--tuned", str(trained.swift_out))  # Swift's output folder, not its checkpoint
    assert "no adapter_config.json" in err and f"did you mean --tuned {trained.swift}" in err
    copy = tmp_path / "tiny-model-copy"
    shutil.copytree(trained.model, copy)
    assert "adapter_config.json says it was trained on" in fails("--model", str(copy), "--tuned", str(trained.lf))
    assert plan(str(copy), [str(trained.lf)], skip_base_check=True)[1].base == str(copy)
    assert "is a LoRA adapter" in fails("--model", str(trained.lf))
    assert "cmmlu-local (group of 67 tasks" in fails("--tuned", str(trained.lf), "--tasks", "gsm8k-chat")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "sftpack prepare gsm8k" in fails("--tuned", str(trained.lf), "--workdir", str(empty))
    assert not (tmp_path / "eval-errors").exists()  # nothing ran


@pytest.mark.integration
@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (pip install vllm)")
def test_sftpack_eval_vllm_backend(trained, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    out = tmp_path / "eval-vllm"
    cmd = [sys.executable, "-m", "sftpack", "eval", "--backend", "vllm", "--model", str(trained.model),
           "--tuned", f"lf={trained.lf}", "--tasks", "gsm8k-local-chat", "--limit", "3", "--dtype", "float32",
           "--workdir", str(trained.root), "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, cwd=tmp_path, env=trained.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert "lora_local_path=" in " ".join(report["models"][1]["runs"][0]["command"])
    assert {r["metric"] for r in report["rows"]} >= {"exact_match", "format_rate"}


@pytest.mark.integration
def test_lm_eval_local_is_the_lm_eval_script_without_the_builtin_index(adapter_eval, tmp_path, env, capsys):
    """What `sftpack eval` ran for the Swift adapter -- `python -m sftpack.evaluate.lm_eval_local ARGS` (every task is
    in the task folders), the last of the three runs sharing one process (`--runs`: after the base model and the LF
    adapter) -- and the plain `lm_eval` script with the same ARGS in a process of its own (eval.json's
    `lm_eval_command`): the same requests, generations, scores, task configs and samples."""
    import time

    report = json.loads((adapter_eval.out / "eval.json").read_text(encoding="utf-8"))
    (run,) = next(m for m in report["models"] if m["label"] == "swift")["runs"]
    assert run["command"][1:3] == ["-m", "sftpack.evaluate.lm_eval_local"]
    assert run["process"]["runs"] == 3 and run["process"]["command"][-2] == "--runs"
    assert all(m["runs"][0]["process"] == run["process"] for m in report["models"])   # one process for the three
    plain = list(run["lm_eval_command"])
    assert Path(plain[0]).name == "lm_eval" and plain[1:] == run["command"][3:]
    plain[plain.index("--output_path") + 1] = str(tmp_path / "plain")
    started = time.monotonic()
    done = subprocess.run(plain, cwd=report["settings"]["workdir"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with capsys.disabled():
        print(f"\nplain lm_eval {time.monotonic() - started:.1f} s, lm_eval_local {run['wall_s']:.1f} s "
              f"(the third run of one process)")

    def read(found):
        samples = {task: [{k: v for k, v in json.loads(line).items() if k != "doc_hash"}
                          for line in path.read_text(encoding="utf-8").splitlines()]
                   for task, path in found.samples_files.items()}
        return found.results["results"], found.results["n-shot"], found.results["configs"], samples

    local = read(results.read_run(Path(run["results_file"]).parent))
    assert read(results.read_run(tmp_path / "plain")) == local
    assert set(local[3]) >= {"gsm8k-local-chat", "gsm8k-local"}
    assert all(sorted({row["doc_id"] for row in rows}) == list(range(adapter_eval.limit)) for rows in local[3].values())


@pytest.mark.integration
def test_a_run_failing_in_a_shared_process_is_named_and_ends_the_eval(trained, tmp_path, capsys):
    """Base, a broken adapter (its weights file is not safetensors), then a good one: the three share one lm-eval
    process. The broken run fails with its label and its log named, the run after it never starts, no report."""
    broken = tmp_path / "broken"
    shutil.copytree(trained.lf, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "eval"
    code = sftpack_main(["eval", "--model", str(trained.model), "--tuned", f"broken={broken}", f"lf={trained.lf}",
                         "--tasks", "gsm8k-local-chat", "--limit", "1", "--device", "cpu", "--gen-kwargs",
                         "max_gen_toks=4", "--workdir", str(trained.root), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    log = out / "logs" / "broken-default-shots.log"
    assert code == 1 and "lm-eval's run of broken, default-shots (run 2 of 3 in one process)" in err, err
    assert f"log: {log}" in err and "Traceback" in log.read_text(encoding="utf-8")
    status = json.loads((out / "lm_eval" / "process-1.status.json").read_text(encoding="utf-8"))
    assert len(status) == 2 and status[0]["exit"] == 0 and status[1]["exit"] != 0
    assert (out / "logs" / "base-default-shots.log").is_file() and not (out / "logs" / "lf-default-shots.log").exists()
    assert not (out / "eval.json").exists()
