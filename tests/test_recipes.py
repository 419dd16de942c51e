"""Data recipes (issue 4): every example recipe on the real reference data, counts checked exactly against
independent computations, determinism, bad input, and LLaMA-Factory + Swift loading what the recipes wrote.

    .venv/bin/python -m pytest tests/test_recipes.py                      # all (~1 min on 2 CPUs)
    .venv/bin/python -m pytest tests/test_recipes.py -m "not integration" # without the real LLaMA-Factory CLI
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sftpack import dataset_info
from sftpack import frameworks as fw
from sftpack.errors import SftpackError

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "dataset_info" / "recipes"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def rows_of(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def run(recipe: Path | str, out: Path, **kwargs):
    from sftpack.recipes.run import run_recipe

    kwargs.setdefault("progress", False)
    return run_recipe(recipe, out, **kwargs)


def cli(*argv: str) -> int:
    from sftpack.cli import main

    return main(["recipe", *argv, "--quiet"])


def norm_question(text: str) -> str:
    """The dedup key, written out independently of sftpack: NFKC, lower case, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


@pytest.fixture(scope="module")
def data_vars(shared_data) -> dict[str, str]:
    return {"data": str(shared_data)}


@pytest.fixture(scope="module")
def built(build_once, shared_data, tiny_model, data_vars):
    """Every example recipe run once into one dataset_info folder, then the mixture: {name: result}. Built once per
    session (the module's tests may run in both xdist workers; the results travel pickled); read-only."""
    import pickle

    from sftpack.recipes.mixture import run_mixture

    def build(root: Path) -> None:
        out = root / "dataset_info"
        results = {
            "gsm8k_dedup_budget": run(RECIPES / "gsm8k_dedup_budget.yaml", out,
                                      var_overrides={**data_vars, "tokenizer": str(tiny_model)}),
            "cmmlu_mcq_epoch": run(RECIPES / "cmmlu_mcq_epoch.yaml", out,
                                   var_overrides={"cmmlu": str(shared_data / "cmmlu" / "test")}),
            "en_zh_mix": run(RECIPES / "en_zh_mix.yaml", out, var_overrides=data_vars),
            "gsm8k_math_quota": run(RECIPES / "gsm8k_math_quota.yaml", out, var_overrides=data_vars),
        }
        results["math_mix"] = run_mixture(RECIPES / "math_mix.yaml", out)
        (root / "results.pickle").write_bytes(pickle.dumps(results))

    root = build_once("recipes", build)
    return {"root": root, "out": root / "dataset_info", **pickle.loads((root / "results.pickle").read_bytes())}


# ---------------------------------------------------------------------------------------------- examples


def test_every_example_recipe_loads_and_documents_its_command(shared_data, tiny_model, sample_workdir):
    from sftpack.recipes.cli import check_recipe
    from sftpack.recipes.mixture import load_mixture
    from sftpack.recipes.run import is_mixture
    from sftpack.recipes.schema import load_yaml

    files = sorted(RECIPES.glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("# ") and f"sftpack recipe dataset_info/recipes/{path.name}" in text, path
        declared = set(load_yaml(path).data.get("vars") or {})
        overrides = {k: v for k, v in {"data": str(shared_data), "tokenizer": str(tiny_model),
                                       "cmmlu": str(shared_data / "cmmlu" / "test"),
                                       "dataset_info": str(sample_workdir / "dataset_info")}.items() if k in declared}
        if is_mixture(load_yaml(path)):
            load_mixture(path, overrides)
        else:
            check_recipe(path, overrides)
    readme = (RECIPES / "README.md").read_text(encoding="utf-8")
    for path in files:
        assert path.name in readme, f"{path.name} missing from dataset_info/recipes/README.md"


def test_gsm8k_exact_near_dedup_and_token_budget(built, shared_data, tiny_model):
    from tokenizers import Tokenizer

    result = built["gsm8k_dedup_budget"]
    source = rows_of(shared_data / "gsm8k" / "train.jsonl")
    exact, near, _, sample = result.steps
    assert result.stats["rows_read"] == exact.rows_in == 7473
    assert exact.rows_out == len({norm_question(r["question"]) for r in source})
    assert exact.details["duplicates_removed"] == exact.rows_in - exact.rows_out

    # every near duplicate removed really is one: true Jaccard of the character 5-grams of the pair
    assert near.details["near_duplicates_removed"] == near.rows_in - near.rows_out >= 1
    for example in near.details["examples"]:
        removed, kept = (source[int(example[k].rsplit(" ", 1)[1]) - 1]["question"] for k in ("removed", "kept"))
        grams = [{norm_question(q)[i:i + 5] for i in range(len(norm_question(q)) - 4)} for q in (removed, kept)]
        assert len(grams[0] & grams[1]) / len(grams[0] | grams[1]) >= 0.7, example

    out = rows_of(built["out"] / "gsm8k_dedup.jsonl")
    assert len(out) == sample.rows_out == result.outputs[0].rows
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    counts = [sum(len(tokenizer.encode(r[f], add_special_tokens=False).ids) for f in ("question", "answer"))
              for r in out]
    assert max(counts) <= 1024
    assert sum(counts) == sample.details["delivered"]["all"]["tokens"] <= 400_000
    assert 400_000 - sum(counts) < 1024   # the sample stops at the first row that would pass the budget
    # the kept rows are input rows, unchanged and in file order
    position = {json.dumps(r, sort_keys=True): i for i, r in enumerate(source)}
    order = [position[json.dumps(r, sort_keys=True)] for r in out]
    assert order == sorted(order)
    assert dataset_info.load(built["out"] / "dataset_info.json")["gsm8k_dedup"] == {
        "file_name": "gsm8k_dedup.jsonl", "formatting": "alpaca",
        "columns": {"prompt": "question", "response": "answer"}}
    stats = json.loads((built["out"] / "gsm8k_dedup.stats.json").read_text())
    assert stats["schema_version"] == 1 and stats["outputs"][0]["tokens"]["rows"] == len(out)
    assert stats["environment"]["packages"]["sftpack"] and "## Steps" in (
        built["out"] / "gsm8k_dedup.stats.md").read_text()


def test_cmmlu_option_shuffle_and_epoch_split(built, shared_data):
    files = sorted((shared_data / "cmmlu" / "test").glob("*.csv"))
    per_subject = {}
    for path in files:
        with path.open(encoding="utf-8", newline="") as handle:
            per_subject[path.stem] = list(csv.DictReader(handle))
    assert sum(len(rows) for rows in per_subject.values()) == 11_582 and len(per_subject) == 67
    # CMMLU repeats some questions (same options, maybe reordered): the recipe keeps the first copy of each
    seen, kept = set(), {}
    for subject, rows_ in per_subject.items():
        for r in rows_:
            key = (norm_question(r["Question"]), tuple(sorted(norm_question(r[k]) for k in "ABCD")))
            if key not in seen:
                seen.add(key)
                kept.setdefault(subject, []).append(r)
    questions = sum(len(rows) for rows in kept.values())
    assert questions == 11_541

    result = built["cmmlu_mcq_epoch"]
    assert (result.steps[0].rows_in, result.steps[0].rows_out) == (11_582, questions)
    sizes = {o.dataset: o.rows for o in result.outputs}
    assert sizes == {"cmmlu_mcq_train": 4 * questions - 2 * 20 * 67, "cmmlu_mcq_valid": 20 * 67,
                     "cmmlu_mcq_test": 20 * 67}
    split = result.steps[2]
    assert split.details["last_variant"] == 3
    assert all(g["valid"] == 20 and g["test"] == 20 for g in split.details["per_group"].values())
    assert sorted(split.details["per_group"]) == sorted(per_subject)

    rows = [r for name in sizes for r in rows_of(built["out"] / f"{name}.jsonl")]
    assert len(rows) == 4 * questions
    by_question: dict[tuple, list[str]] = {}
    for row in rows:
        question, *options = row["instruction"].split("\n")
        letters = {line[0]: line[3:] for line in options}
        letter, text = row["output"][0], row["output"][3:]
        assert list(letters) == ["A", "B", "C", "D"] and letters[letter] == text  # the answer is at its letter
        by_question.setdefault((question, tuple(sorted(letters.values())), text), []).append(letter)
    truth = Counter((r["Question"], tuple(sorted(r[k] for k in "ABCD")), r[r["Answer"]])
                    for rows_ in kept.values() for r in rows_)
    assert Counter({k: len(v) // 4 for k, v in by_question.items()}) == truth
    for key, letters in by_question.items():
        if truth[key] == 1:  # 1 original + 3 shuffles: the answer sits at four different letters
            assert sorted(letters) == ["A", "B", "C", "D"], key


def test_en_zh_mix_language_ratio(built):
    result = built["en_zh_mix"]
    rows = rows_of(built["out"] / "en_zh_mix.jsonl")
    assert len(rows) == 4000
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)

    def language(text: str) -> str:  # the documented rule: zh when CJK ideographs are >= 30% of CJK + Latin
        cjk, latin = len(CJK.findall(text)), len(re.findall("[A-Za-z]", text))
        return "zh" if cjk >= 0.3 * (cjk + latin) else "en"

    assert Counter(language(r["messages"][0]["content"]) for r in rows) == {"en": 3000, "zh": 1000}
    # CMMLU rows written mostly in Latin letters (code, formulas, English terms) count as English
    assert 1000 < sum(1 for r in rows if CJK.search(r["messages"][0]["content"])) < 1200
    assert result.outputs[0].tags["language"] == {"en": 3000, "zh": 1000}
    assert result.stats["rows_read"] == 7473 + 11_582
    assert dataset_info.load(built["out"] / "dataset_info.json")["en_zh_mix"]["tags"]["role_tag"] == "role"


def test_category_quotas_and_prompt_templates(built):
    recipe = yaml.safe_load((RECIPES / "gsm8k_math_quota.yaml").read_text())
    rules = recipe["steps"][0]["tag_category"]["rules"]
    quotas = recipe["steps"][1]["quota"]["counts"]
    rows = rows_of(built["out"] / "gsm8k_math_quota.jsonl")

    def category(answer: str) -> str:
        return next((r["category"] for r in rules if re.search(r["pattern"], answer)), "word_problem")

    assert Counter(category(r["output"]) for r in rows) == Counter(quotas)
    assert built["gsm8k_math_quota"].outputs[0].tags["category"] == dict(sorted(quotas.items()))
    prompts = {}
    for path in (RECIPES / "prompts" / "math").glob("*.prompt"):
        kind, where = path.name.split(".")[:2]
        prompts.setdefault(kind, {})[where] = path.read_text(encoding="utf-8").splitlines()
    places = Counter()
    for row in rows:
        first = row["instruction"].split("\n", 1)[0]
        last = row["instruction"].rsplit("\n", 1)[1]
        kind = category(row["output"])
        if first in prompts[kind].get("pre", []):
            places["pre"] += 1
        else:
            assert last in prompts[kind]["post"], row["instruction"]
            places["post"] += 1
    assert places["pre"] > 100 and places["post"] > 100   # random placement uses both


def test_same_seed_same_bytes_other_seed_other_rows(built, data_vars, tmp_path):
    again = run(RECIPES / "gsm8k_math_quota.yaml", tmp_path / "a", var_overrides=data_vars)
    other = run(RECIPES / "gsm8k_math_quota.yaml", tmp_path / "b", var_overrides={**data_vars, "seed": "7"})
    first = built["gsm8k_math_quota"].outputs[0]
    assert again.outputs[0].sha256 == first.sha256
    assert (tmp_path / "a" / "gsm8k_math_quota.jsonl").read_bytes() == (built["out"] / "gsm8k_math_quota.jsonl"
                                                                       ).read_bytes()
    assert other.outputs[0].sha256 != first.sha256 and other.outputs[0].rows == first.rows


def test_parallel_workers_write_the_same_bytes(built, data_vars, tmp_path):
    """Forked workers over small chunks give exactly the serial result (en/zh mix: 2 inputs, 8 steps)."""
    parallel = run(RECIPES / "en_zh_mix.yaml", tmp_path, var_overrides=data_vars, workers=2,
                   min_parallel_bytes=0, chunk_bytes=256 * 1024)
    assert parallel.stats["timing"]["workers"] == 2
    assert [(o.dataset, o.sha256) for o in parallel.outputs] == [(o.dataset, o.sha256)
                                                                 for o in built["en_zh_mix"].outputs]
    assert [(s.rows_in, s.rows_out) for s in parallel.steps] == [(s.rows_in, s.rows_out)
                                                                 for s in built["en_zh_mix"].steps]


def test_cmmlu_rerun_is_identical_and_short_subjects_warn(built, shared_data, tmp_path, capsys):
    again = run(RECIPES / "cmmlu_mcq_epoch.yaml", tmp_path / "a",
                var_overrides={"cmmlu": str(shared_data / "cmmlu" / "test")})
    assert [o.sha256 for o in again.outputs] == [o.sha256 for o in built["cmmlu_mcq_epoch"].outputs]
    dev = run(RECIPES / "cmmlu_mcq_epoch.yaml", tmp_path / "dev",
              var_overrides={"cmmlu": str(shared_data / "cmmlu" / "dev"), "per_subject": "3"})
    # dev has 5 questions per subject: 3 valid + 2 test delivered, stated in the warning
    assert {o.dataset: o.rows for o in dev.outputs} == {"cmmlu_mcq_train": 4 * 335 - 5 * 67,
                                                       "cmmlu_mcq_valid": 3 * 67, "cmmlu_mcq_test": 2 * 67}
    assert any("delivered 3 valid, 2 test" in w for w in dev.stats["warnings"])
    assert "delivered 3 valid, 2 test" in capsys.readouterr().err


def test_mixture_emits_both_frameworks_forms(built):
    mix = built["math_mix"]
    assert mix.llamafactory == {"dataset": "gsm8k_dedup,en_zh_mix", "mix_strategy": "interleave_under",
                                "interleave_probs": "0.75,0.25"}
    assert mix.swift == {"dataset": ["gsm8k_dedup#1800", "en_zh_mix#600"]}
    written = yaml.safe_load(mix.file.read_text())
    assert written["llamafactory"] == mix.llamafactory and written["swift"] == mix.swift
    gsm_rows = built["gsm8k_dedup_budget"].outputs[0].rows
    assert written["expected_rows"] == {"llamafactory": round(min(gsm_rows / 0.75, 4000 / 0.25)), "swift": 2400}
    assert mix.file.read_text().startswith("# Mixture 'math_mix'")


# ---------------------------------------------------------------------------------------------- frameworks


def test_llamafactory_parses_every_recipe_entry(built):
    from llamafactory.data.parser import get_dataset_list

    names = [o.dataset for key in ("gsm8k_dedup_budget", "cmmlu_mcq_epoch", "en_zh_mix", "gsm8k_math_quota")
             for o in built[key].outputs]
    attrs = {a.dataset_name: a for a in get_dataset_list(names, str(built["out"]))}
    assert (attrs["gsm8k_dedup.jsonl"].prompt, attrs["gsm8k_dedup.jsonl"].response) == ("question", "answer")
    assert attrs["cmmlu_mcq_test.jsonl"].formatting == "alpaca"
    chat = attrs["en_zh_mix.jsonl"]
    assert (chat.formatting, chat.messages, chat.role_tag, chat.user_tag) == ("sharegpt", "messages", "role", "user")


def test_swift_loads_every_recipe_output_under_the_same_name(built, monkeypatch):
    from sftpack.swift_datasets import register_all
    from swift.dataset import load_dataset

    monkeypatch.chdir(built["root"])
    names = register_all()
    expected = {o.dataset: o for key in ("gsm8k_dedup_budget", "cmmlu_mcq_epoch", "en_zh_mix", "gsm8k_math_quota")
                for o in built[key].outputs}
    assert set(expected) <= set(names)
    for name, output in expected.items():
        train, _ = load_dataset([name], num_proc=1)
        assert len(train) == output.rows, name
        first = json.loads(output.file.open(encoding="utf-8").readline())
        messages = [{k: v for k, v in m.items() if v is not None} for m in train[0]["messages"]]
        if "messages" in first:
            assert messages == first["messages"]
        elif "question" in first:
            assert messages == [{"role": "user", "content": first["question"]},
                                {"role": "assistant", "content": first["answer"]}]
        else:
            assert messages == [{"role": "user", "content": first["instruction"]},
                                {"role": "assistant", "content": first["output"]}]
    mixed, _ = load_dataset(built["math_mix"].swift["dataset"], num_proc=1)
    assert len(mixed) == 2400


@pytest.mark.integration
def test_llamafactory_trains_on_the_mixture(built, tiny_model, env, tmp_path):
    """`llamafactory-cli train` with the mixture's own keys (interleaving an alpaca and a messages dataset)."""
    out = tmp_path / "lf_mix"
    overrides = {**fw.TINY_CPU_LF, "model_name_or_path": tiny_model, "output_dir": out, "max_steps": 2,
                 "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "logging_steps": 1,
                 "save_steps": 2, "cutoff_len": 256, **built["math_mix"].llamafactory}
    fw.run_logged(fw.lf_train_cmd(fw.LF_LORA_CONFIG, overrides), built["root"], env, tmp_path / "lf.log",
                  echo=False)
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").open()]
    assert log[-1]["current_steps"] == 2 and all(entry["loss"] > 0 for entry in log if "loss" in entry)


# ---------------------------------------------------------------------------------------------- bad input


def write_recipe(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GSM_RECIPE = """\
inputs:
  - {{name: g, path: '{path}'}}
steps:
{steps}
output:
  name: out
  columns: {{prompt: question, response: answer}}
"""


@pytest.fixture
def guarded(tmp_path):
    """An output folder holding one user entry; after a failed run it must be exactly as it was."""
    out = tmp_path / "dataset_info"
    out.mkdir()
    dataset_info.merge(out / "dataset_info.json", {"mine": {"file_name": "mine.jsonl"}})
    before = sorted(p.name for p in out.iterdir()), (out / "dataset_info.json").read_bytes()
    yield out
    assert (sorted(p.name for p in out.iterdir()), (out / "dataset_info.json").read_bytes()) == before


def test_malformed_json_row_names_file_and_line(tmp_path, shared_data, guarded, capsys):
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + ['{"question": "x", "answer": '] + lines[2:]) + "\n", encoding="utf-8")
    recipe = write_recipe(tmp_path, GSM_RECIPE.format(path=bad, steps="  - exact_dedup: {fields: [question]}"))
    assert cli(str(recipe), "--out", str(guarded)) == 1
    err = capsys.readouterr().err
    assert f"{bad}: line 3: not valid JSON" in err


def test_missing_field_names_file_line_and_field(tmp_path, guarded, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n\n{"answer": "c"}\n', encoding="utf-8")
    recipe = write_recipe(tmp_path, GSM_RECIPE.format(path=data, steps="  - exact_dedup: {fields: [question]}"))
    assert cli(str(recipe), "--out", str(guarded)) == 1
    assert f"{data}: line 3, field 'question': missing" in capsys.readouterr().err


def test_csv_with_a_wrong_column_count(tmp_path, shared_data, guarded, capsys):
    folder = tmp_path / "cmmlu"
    folder.mkdir()
    source = (shared_data / "cmmlu" / "test" / "agronomy.csv").read_text(encoding="utf-8")
    (folder / "agronomy.csv").write_text(source + "170,问题,甲,乙,丙,丁,A,多余\n", encoding="utf-8")
    line = source.count("\n") + 1
    assert cli(str(RECIPES / "cmmlu_mcq_epoch.yaml"), "--var", f"cmmlu={folder}", "--out", str(guarded)) == 1
    assert (f"{folder / 'agronomy.csv'}: line {line}: 8 values, but the header has 7 columns"
            in capsys.readouterr().err)


def test_answer_letter_outside_a_to_d(tmp_path, shared_data, guarded, capsys):
    folder = tmp_path / "cmmlu"
    folder.mkdir()
    rows = (shared_data / "cmmlu" / "test" / "anatomy.csv").read_text(encoding="utf-8").splitlines()
    rows[4] = rows[4][:-1] + "E"
    (folder / "anatomy.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert cli(str(RECIPES / "cmmlu_mcq_epoch.yaml"), "--var", f"cmmlu={folder}", "--out", str(guarded)) == 1
    assert (f"{folder / 'anatomy.csv'}: line 5, field 'Answer': answer letter 'E' is not one of A/B/C/D"
            in capsys.readouterr().err)


def test_prompt_file_missing_for_a_type_that_occurs(tmp_path, shared_data, guarded, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "long.pre.prompt").write_text("Solve this long problem.\n", encoding="utf-8")
    steps = """\
  - tag_category:
      rules: [{category: long, fields: [question], pattern: '.{200}'}]
      default: short
  - prompt_template: {dir: '%s', type: category, field: question}""" % prompts
    recipe = write_recipe(tmp_path, GSM_RECIPE.format(path=shared_data / "gsm8k" / "train.jsonl", steps=steps))
    assert cli(str(recipe), "--out", str(guarded)) == 1
    err = capsys.readouterr().err
    first_short = next(i for i, line in enumerate((shared_data / "gsm8k" / "train.jsonl").open(), start=1)
                       if len(json.loads(line)["question"]) < 200 or not re.search(".{200}",
                                                                                  json.loads(line)["question"]))
    assert f"train.jsonl: line {first_short}, field 'category': no prompt for task type 'short'" in err
    assert "short.pre.prompt or short.post.prompt missing" in err


def test_unmet_quota_warns_with_what_was_delivered_or_fails_when_strict(tmp_path, shared_data, capsys):
    steps = """\
  - tag_category:
      rules: [{category: long, fields: [question], pattern: '.{600}'}]
      default: short
  - quota: {by: category, counts: {long: 500, short: 100}%s}"""
    data = shared_data / "gsm8k" / "train.jsonl"
    long_rows = sum(1 for line in data.open() if re.search(".{600}", json.loads(line)["question"]))
    assert 0 < long_rows < 500
    result = run(write_recipe(tmp_path / "a", GSM_RECIPE.format(path=data, steps=steps % "")), tmp_path / "out")
    assert result.outputs[0].rows == long_rows + 100
    message = f"quota by category not met: 'long': wanted 500, delivered {long_rows}"
    assert any(message in w for w in result.stats["warnings"]) and message in capsys.readouterr().err
    strict = write_recipe(tmp_path / "b", GSM_RECIPE.format(path=data, steps=steps % ", strict: true"))
    assert cli(str(strict), "--out", str(tmp_path / "strict")) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "strict" / "out.jsonl").exists()


def test_unknown_steps_keys_and_vars_list_what_is_allowed(tmp_path, shared_data, capsys):
    data = shared_data / "gsm8k" / "train.jsonl"
    from sftpack.recipes.run import load_recipe

    with pytest.raises(SftpackError, match=r"line 4: steps\[1\]: unknown step 'dedup'. Steps: \[.*'exact_dedup'"):
        load_recipe(write_recipe(tmp_path / "a", GSM_RECIPE.format(path=data, steps="  - dedup: {}")))
    with pytest.raises(SftpackError, match=r"line 4: steps\[1\] \(exact_dedup\): unknown keys \['feilds'\]. "
                                           r"Expected: \['inputs', 'fields', 'normalize', 'any_order'\]"):
        load_recipe(write_recipe(tmp_path / "b", GSM_RECIPE.format(path=data,
                                                                   steps="  - exact_dedup: {feilds: [q]}")))
    with pytest.raises(SftpackError, match=r"normalize.*unknown \['casefold'\]. Expected: \['nfkc', 'lower'"):
        load_recipe(write_recipe(tmp_path / "c", GSM_RECIPE.format(
            path=data, steps="  - exact_dedup: {fields: [q], normalize: [casefold]}")))
    with pytest.raises(SftpackError, match=r"unknown keys \['output_dir'\]. Expected: \['description', 'seed'"):
        load_recipe(write_recipe(tmp_path / "d", GSM_RECIPE.format(path=data, steps="  []") + "output_dir: x\n"))
    with pytest.raises(SftpackError, match=r"unknown var \$\{dat\}. Defined: \['recipe_dir'\]"):
        load_recipe(write_recipe(tmp_path / "e", GSM_RECIPE.format(path="${dat}/x.jsonl", steps="  []")))
    with pytest.raises(SftpackError, match=r"tag 'variant' is not set by any earlier step"):
        load_recipe(write_recipe(tmp_path / "f", GSM_RECIPE.format(path=data, steps="  - epoch_split: {}")))
    assert cli(str(RECIPES / "gsm8k_math_quota.yaml"), "--var", "sed=1") == 1
    assert "--var ['sed']: declared in none of" in capsys.readouterr().err
    with pytest.raises(SftpackError, match=r"mcq_augment.*shuffles must be >= 0"):
        load_recipe(write_recipe(tmp_path / "g", GSM_RECIPE.format(path=data,
                                                                   steps="  - mcq_augment: {shuffles: -1}")))


def test_malformed_dataset_info_stops_before_any_work(tmp_path, shared_data, capsys):
    out = tmp_path / "dataset_info"
    out.mkdir()
    (out / "dataset_info.json").write_text("{broken", encoding="utf-8")
    assert cli(str(RECIPES / "gsm8k_math_quota.yaml"), "--var", f"data={shared_data}", "--out", str(out)) == 1
    assert "line 1, column 2: not valid JSON" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json"]


def test_recipe_keeps_other_entries_and_prints_a_summary(tmp_path, shared_data, capsys):
    out = tmp_path / "dataset_info"
    dataset_info.merge(out / "dataset_info.json", {"mine": {"file_name": "mine.jsonl"}})
    assert cli(str(RECIPES / "gsm8k_math_quota.yaml"), "--var", f"data={shared_data}", "--out", str(out)) == 0
    assert list(dataset_info.load(out / "dataset_info.json")) == ["mine", "gsm8k_math_quota"]
    printed = capsys.readouterr().out
    assert "gsm8k_math_quota: 1,180 rows" in printed and "quota" in printed


def test_steps_listing_names_every_registered_step(capsys):
    from sftpack.recipes.registry import STEPS

    assert cli("--steps") == 0
    listing = capsys.readouterr().out
    for name in ("exact_dedup", "near_dedup", "filter_length", "filter_tokens", "tag_language", "tag_category",
                 "sample", "quota", "prompt_template", "mcq_augment", "epoch_split", "format", "compact_solution"):
        assert name in STEPS and f"\n{name} (" in "\n" + listing


def test_key_encoder_equals_the_readable_normaliser(shared_data):
    """The fast byte path of the dedup key is the readable str path, on real text and on edge cases."""
    import random
    import string

    from sftpack.recipes.text import key_encoder, normalizer

    texts = [json.loads(line)["question"] for line in (shared_data / "gsm8k" / "train.jsonl").open()][:2000]
    texts += ["  a\u3000b\xa0c\x1cd\x85e\u2028f ", "A\x1fB\x0bC   D\r\n", "", " ", "Ｆｕｌｌ  width"]
    rng = random.Random(0)
    alphabet = string.printable + "\x1c\x1d\x1e\x1f"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(3000)]
    for ops in [("nfkc", "lower", "whitespace"), ("whitespace",), ("lower", "punct", "whitespace")]:
        fast, readable = key_encoder(ops), normalizer(ops)
        assert all(fast(t) == readable(t).encode() for t in texts), ops
    assert normalizer(("nfkc", "lower", "whitespace"))("Ｆｕｌｌ  width\n") == "full width"


def test_benchmark_script_runs_at_small_scale(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "recipe_dedup_bench.py"), str(out),
                           "--rows", "20000", "--sample", "5000", "--workers", "2", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["schema_version"] == 1
    assert result["checks"] == {"same_output": True, "distinct_matches": True}
    assert result["config"]["distinct"] == 14_000 and result["recipe"]["rows_out"] == 5000
    assert result["recipe"]["peak_rss_tree_sampled_bytes"] > 0 and result["baseline"]["rows_per_s"] > 0
    assert (out / "report.md").read_text().startswith("# Recipe exact dedup")
    assert not (out / "work").exists()


def test_pass_structure_does_not_change_the_result(tmp_path, shared_data):
    """Tag steps between select steps add a pass that keeps rows in place (and carries dropped ones); the
    same steps in an order that needs one pass give the same rows, serial or parallel."""
    data = shared_data / "gsm8k" / "train.jsonl"
    tag = """\
  - tag_category:
      rules: [{category: money, fields: [question], pattern: '\\$'}, {category: long, fields: [answer],
               pattern: '(?s).{400}'}]"""
    select = """\
  - exact_dedup: {fields: [answer], normalize: [whitespace]}
  - filter_length: {fields: [question], min_chars: 150}"""
    quota = "  - quota: {by: category, counts: {money: 300, long: 300, other: 300}}"
    two_passes = run(write_recipe(tmp_path / "a", GSM_RECIPE.format(path=data, steps="\n".join([select, tag, quota]))),
                     tmp_path / "out_a", workers=1)
    one_pass = run(write_recipe(tmp_path / "b", GSM_RECIPE.format(path=data, steps="\n".join([tag, select, quota]))),
                   tmp_path / "out_b", workers=2, min_parallel_bytes=0, chunk_bytes=512 * 1024)
    assert len(two_passes.stats["timing"]["pass_s"]) == 3 and len(one_pass.stats["timing"]["pass_s"]) == 2
    assert two_passes.outputs[0].sha256 == one_pass.outputs[0].sha256
    assert two_passes.outputs[0].rows == 900 and two_passes.outputs[0].tags["category"] == {
        "long": 300, "money": 300, "other": 300}
    seen, kept = set(), []
    for row in rows_of(data):
        key = " ".join(row["answer"].split())
        if key not in seen:
            seen.add(key)
            kept.append(row)
    expected = sum(1 for row in kept if len(row["question"]) >= 150)
    for result in (two_passes, one_pass):
        assert {s.step: s.rows_out for s in result.steps}["filter_length"] == expected


@pytest.mark.parametrize("layout", ["sharegpt", "alpaca"])
def test_other_layouts_with_a_system_prompt_load_in_both_frameworks(tmp_path, shared_data, layout, monkeypatch):
    from llamafactory.data.parser import get_dataset_list
    from swift.dataset import load_dataset

    from sftpack.swift_datasets import register_all

    source = tmp_path / "rows.jsonl"
    rows = rows_of(shared_data / "gsm8k" / "test.jsonl")[:50]
    source.write_text("".join(json.dumps({**r, "sys": f"You solve problem {i}."}) + "\n"
                              for i, r in enumerate(rows)), encoding="utf-8")
    fields = "user: question, assistant: answer" if layout == "sharegpt" else "instruction: question, output: answer"
    recipe = write_recipe(tmp_path, GSM_RECIPE.format(path=source, steps=f"""\
  - filter_length: {{fields: [question], max_chars: 200}}
  - format: {{to: {layout}, {fields}, system: sys}}""").replace(
        "  columns: {prompt: question, response: answer}\n", ""))
    result = run(recipe, tmp_path / "dataset_info")
    kept = [(i, r) for i, r in enumerate(rows) if len(r["question"]) <= 200]
    assert result.outputs[0].rows == len(kept) > 10
    attr = get_dataset_list(["out"], str(tmp_path / "dataset_info"))[0]
    assert (attr.formatting, attr.system) == (layout, "system")
    monkeypatch.chdir(tmp_path)
    assert "out" in register_all()
    train, _ = load_dataset(["out"], num_proc=1)
    i, first = kept[0]
    assert [{k: v for k, v in m.items() if v is not None} for m in train[0]["messages"]] == [
        {"role": "system", "content": f"You solve problem {i}."}, {"role": "user", "content": first["question"]},
        {"role": "assistant", "content": first["answer"]}]


def test_headerless_mmlu_layout_csv(tmp_path, shared_data):
    """MMLU's files have no header row and no index column: `columns` names them."""
    folder = tmp_path / "mmlu"
    folder.mkdir()
    for subject in ("anatomy", "astronomy"):
        with (shared_data / "cmmlu" / "dev" / f"{subject}.csv").open(encoding="utf-8", newline="") as handle:
            rows = [[r["Question"], r["A"], r["B"], r["C"], r["D"], r["Answer"]] for r in csv.DictReader(handle)]
        with (folder / f"{subject}_dev.csv").open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows(rows)
    recipe = write_recipe(tmp_path, f"""\
inputs:
  - {{name: mmlu, path: '{folder}', glob: '*_dev.csv', file_field: subject,
     columns: [question, A, B, C, D, answer]}}
steps:
  - mcq_augment: {{question: question, answer: answer, shuffles: 1, keep: [subject]}}
  - format: {{to: alpaca, instruction: instruction, output: output, keep: [subject]}}
output:
  name: mmlu_dev
""")
    result = run(recipe, tmp_path / "out")
    written = rows_of(tmp_path / "out" / "mmlu_dev.jsonl")
    assert result.outputs[0].rows == len(written) == 2 * 5 * 2
    assert Counter(r["subject"] for r in written) == {"anatomy_dev": 10, "astronomy_dev": 10}


def test_compact_solution_keeps_the_equations_and_the_answer_line(tmp_path, shared_data, guarded, capsys):
    """The shipped gsm8k_equations recipe on real GSM8K rows, checked against the rows' own annotations; `keep: final`;
    a solution without a `#### N` line is an error naming file, line and field, and nothing is written."""
    source = tmp_path / "prepared"
    source.mkdir()
    rows = rows_of(shared_data / "gsm8k" / "train.jsonl")[:300]
    (source / "gsm8k_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run(RECIPES / "gsm8k_equations.yaml", tmp_path / "eq", var_overrides={"dataset_info": str(source)})
    written = rows_of(tmp_path / "eq" / "gsm8k_equations.jsonl")
    assert result is not None and len(written) == len(rows)
    for row, out in zip(rows, written):
        equations = [part.split(">>")[0] for part in row["answer"].split("<<")[1:]]
        final = row["answer"].rstrip().splitlines()[-1].strip()
        assert out == {**row, "answer": "\n".join(equations + [final])}
    assert written[0]["answer"] == "48/2=24\n48+24=72\n#### 72"
    assert json.loads((tmp_path / "eq" / "dataset_info.json").read_text())["gsm8k_equations"]["columns"] == \
        {"prompt": "question", "response": "answer"}

    recipe = write_recipe(tmp_path / "final", GSM_RECIPE.format(path=source / "gsm8k_train.jsonl",
                                                                steps="  - compact_solution: {keep: final}"))
    run(recipe, tmp_path / "final_out")
    assert [r["answer"] for r in rows_of(tmp_path / "final_out" / "out.jsonl")] == \
        [r["answer"].rstrip().splitlines()[-1].strip() for r in rows]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"question": "q", "answer": "no answer line"}) + "\n",
                   encoding="utf-8")
    recipe = write_recipe(tmp_path / "bad", GSM_RECIPE.format(path=bad, steps="  - compact_solution: {}"))
    assert cli(str(recipe), "--out", str(guarded)) == 1
    err = capsys.readouterr().err
    assert f"{bad}: line 2, field 'answer'" in err and "#### <number>" in err
