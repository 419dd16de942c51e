"""Exact dedup + sampling + write of a 1,000,000-row GSM8K-like JSONL: the recipe engine vs plain `datasets`.

    .venv/bin/python benchmarks/recipe_dedup_bench.py [OUT_DIR] [--rows 1000000] [--dup-share 0.3]
        [--sample 500000] [--workers N] [--text-scale 1] [--keep-data]
    .venv/bin/python benchmarks/recipe_dedup_bench.py OUT_DIR --report-only     # rebuild report.md

Run from the repo root; the rows are built from ../shared/data/gsm8k when present, else from the GSM8K sample
shipped in the package. Writes OUT_DIR
(default runs/bench/recipe_dedup/) /result.json (schema_version 1) and /report.md (rebuilt from
result.json alone); the generated data and outputs live in OUT_DIR/work/ and are deleted unless --keep-data.

What it does, in one run:
1. writes `--rows` GSM8K-like rows (question + worked answer, ~560 bytes each): a share `--dup-share` of them
   repeats an earlier row, half verbatim and half with its question re-cased / re-spaced (the normalised key
   catches both), so the number of distinct questions is known exactly;
2. recipe: `sftpack recipe` with exact_dedup (NFKC + lower + whitespace on `question`) + sample (`--sample`
   rows, seeded) + write, in a child process;
3. baseline, in another child process: `datasets.load_dataset("json")` + `map` computing the same
   normalised-key hash (num_proc = workers) + first-occurrence indices + the same seeded sample + `select`
   + `to_json`;
4. checks that both wrote the same rows in the same order, and that the distinct count is the known one.
Each pipeline's rows/s is input rows / its wall time (reading, hashing, sampling, writing; not imports), and
rows per CPU-second divides by the CPU time it used (its own + its workers'), which other load does not change;
peak RSS is the child's own ru_maxrss, its workers' largest ru_maxrss, and the sampled sum of RSS over its
process tree (forked workers share pages, so the sum overstates). The machine's load average is stored
too: other processes on a shared machine slow both pipelines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

SCHEMA_VERSION = 1
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k"


def gsm8k_folder() -> Path:
    """The full GSM8K beside the repo when present, else the sample shipped in the package."""
    from sftpack.samples import sample_dir

    return SHARED_GSM8K if (SHARED_GSM8K / "train.jsonl").is_file() else sample_dir("gsm8k")
SEED = 42
TARGET_ROWS_PER_S = 200_000
TARGET_PEAK_RSS_BYTES = 2 * 1024 ** 3

RECIPE = """\
# Written by benchmarks/recipe_dedup_bench.py: exact dedup + sample + write.
seed: {seed}
inputs:
  - name: bench
    path: {data}
steps:
  - exact_dedup:
      fields: [question]
  - sample:
      count: {sample}
output:
  name: bench_dedup
  columns: {{prompt: question, response: answer}}
"""


# ---------------------------------------------------------------------------------------------- data


def _variant(question: str, rng: random.Random) -> str:
    """The same question to the normalised key (NFKC, lower case, collapsed whitespace), not byte-equal."""
    words = question.split(" ")
    if rng.random() < 0.5:
        return question.upper() if rng.random() < 0.5 else question.lower()
    at = rng.randrange(len(words))
    return " ".join(words[:at]) + "  \n " + " ".join(words[at:]) + " "


def generate(path: Path, rows: int, dup_share: float, progress: bool, text_scale: int = 1) -> dict:
    """GSM8K-like rows with a known number of distinct questions."""
    import orjson
    from tqdm import tqdm

    base = []
    for split in ("train", "test"):
        with (gsm8k_folder() / f"{split}.jsonl").open(encoding="utf-8") as handle:
            base += [json.loads(line) for line in handle]
    rng = random.Random(SEED)
    duplicates = round(rows * dup_share)
    distinct = rows - duplicates
    is_dup = [False] * distinct + [True] * duplicates
    rng.shuffle(is_dup)
    if is_dup[0]:  # the first row must be new: swap it with the first new row
        first_new = is_dup.index(False)
        is_dup[0], is_dup[first_new] = False, True
    written, made, verbatim = [], 0, 0
    with path.open("wb", buffering=1 << 20) as out:
        for dup in tqdm(is_dup, desc="generate", unit=" rows", mininterval=0.5, disable=not progress, leave=False):
            if dup:
                index = written[rng.randrange(len(written))]
                row = base[index % len(base)]
                question = f"Problem {index}: {row['question']}"
                if rng.random() < 0.5:
                    verbatim += 1
                else:
                    question = _variant(question, rng)
            else:
                index = made
                made += 1
                written.append(index)
                row = base[index % len(base)]
                question = f"Problem {index}: {row['question']}"
            answer = row["answer"] if text_scale == 1 else "\n".join([row["answer"]] * text_scale)
            out.write(orjson.dumps({"question": question, "answer": answer}))
            out.write(b"\n")
    return {"rows": rows, "distinct": distinct, "duplicates": duplicates, "verbatim_duplicates": verbatim,
            "bytes": path.stat().st_size, "text_scale": text_scale}


# ---------------------------------------------------------------------------------------------- children


def child_recipe(work: Path, data: Path, sample: int, workers: int) -> dict:
    from sftpack.recipes.run import run_recipe

    recipe = work / "bench_recipe.yaml"
    recipe.write_text(RECIPE.format(seed=SEED, data=data, sample=sample), encoding="utf-8")
    out = work / "recipe_out"
    started = time.perf_counter()
    result = run_recipe(recipe, out, workers=workers, progress=True)
    seconds = time.perf_counter() - started
    output = result.outputs[0]
    return {"pipeline_s": seconds, "rows_out": output.rows, "output": str(output.file),
            "distinct": result.steps[0].rows_out, "pass_s": result.stats["timing"]["pass_s"]}


def child_baseline(work: Path, data: Path, sample: int, workers: int) -> dict:
    import datasets
    import numpy as np
    import xxhash
    from sftpack.recipes.registry import derive_seed
    from sftpack.recipes.text import DEFAULT_NORMALIZE, normalize

    datasets.disable_caching()

    def key_hash(batch):  # the recipe's key (sftpack.recipes.features.HashCollector), as a signed int64
        hashes = (xxhash.xxh3_64_intdigest(normalize(q, DEFAULT_NORMALIZE).encode("utf-8", "surrogatepass"))
                  for q in batch["question"])
        return {"key": [h - (1 << 64) if h >= 1 << 63 else h for h in hashes]}

    started = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=str(work / "hf_cache"))
    ds = ds.map(key_hash, batched=True, batch_size=10_000, num_proc=workers if workers > 1 else None,
                desc="hash")
    keys = np.asarray(ds.with_format("numpy")["key"], dtype=np.int64).view(np.uint64)
    _, first = np.unique(keys, return_index=True)
    first.sort()
    # the recipe's sample step draws with this generator (sftpack.recipes.registry.Step.numpy_rng)
    rng = np.random.default_rng(derive_seed(SEED, 2, "sample", "all"))
    chosen = first if sample >= len(first) else np.sort(first[rng.choice(len(first), size=sample, replace=False)])
    keep = set(chosen.tolist())
    ds = ds.filter(lambda _, i: i in keep, with_indices=True, num_proc=workers if workers > 1 else None,
                   desc="filter")
    ds = ds.remove_columns(["key"])
    output = work / "baseline_out.jsonl"
    ds.to_json(str(output), lines=True, force_ascii=False, num_proc=workers if workers > 1 else None)
    seconds = time.perf_counter() - started
    return {"pipeline_s": seconds, "rows_out": len(ds), "output": str(output), "distinct": int(len(first))}


def run_child(kind: str, args) -> dict:
    """Run one pipeline in a child process, sampling its process tree's RSS."""
    import psutil

    cmd = [sys.executable, __file__, str(args.out), "--child", kind, "--sample", str(args.sample),
           "--workers", str(args.workers)]
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HOME=str(args.out / "work" / "hf_home"))
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    peak_tree, stop = [0], threading.Event()

    def sample_rss():
        try:
            parent = psutil.Process(process.pid)
            while not stop.is_set():
                try:
                    total = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(True))
                    peak_tree[0] = max(peak_tree[0], total)
                except psutil.Error:
                    pass
                stop.wait(0.05)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{kind} pipeline failed (exit {process.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 3)
    result["peak_rss_tree_sampled_bytes"] = peak_tree[0]
    return result


def _cpu_s(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def child_main(args) -> None:
    work = args.out / "work"
    data = work / "bench.jsonl"
    fn = child_recipe if args.child == "recipe" else child_baseline
    self_before = _cpu_s(resource.getrusage(resource.RUSAGE_SELF))
    children_before = _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN))
    result = fn(work, data, args.sample, args.workers)
    # CPU seconds of the pipeline (this process + its finished workers): what a quiet machine would need
    result["cpu_s"] = round(_cpu_s(resource.getrusage(resource.RUSAGE_SELF)) - self_before
                            + _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN)) - children_before, 3)
    result["peak_rss_self_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["peak_rss_workers_max_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------- report


def environment() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("sftpack", "datasets", "pyarrow", "numpy", "orjson", "xxhash", "datasketch", "psutil"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                                    check=False).stdout.strip())
    except OSError:
        sha, dirty = "", None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "packages": versions, "git_sha": sha or None, "git_dirty": dirty}


def _same_rows(a: str, b: str) -> bool:
    import orjson

    with open(a, "rb") as fa, open(b, "rb") as fb:
        for la, lb in zip(fa, fb, strict=False):
            if orjson.loads(la) != orjson.loads(lb):
                return False
        return fa.read(1) == b"" and fb.read(1) == b""


def report(result: dict) -> str:
    """report.md, from result.json alone."""
    cfg, rec, base, env = result["config"], result["recipe"], result["baseline"], result["environment"]
    gib = 1024 ** 3

    def row(name: str, r: dict) -> str:
        return (f"| {name} | {r['rows_per_s']:,} | {r['pipeline_s']:.2f} | {r['rows_per_cpu_s'] or 0:,} | "
                f"{r['cpu_s']:.2f} | {r['peak_rss_self_bytes'] / gib:.2f} | "
                f"{r['peak_rss_workers_max_bytes'] / gib:.2f} | {r['peak_rss_tree_sampled_bytes'] / gib:.2f} | "
                f"{r['rows_out']:,} |")

    lines = [
        "# Recipe exact dedup + sample + write vs a plain `datasets` pipeline", "",
        f"{cfg['rows']:,} GSM8K-like rows ({cfg['bytes'] / 1e6:,.0f} MB), {cfg['duplicates']:,} duplicates "
        f"({cfg['verbatim_duplicates']:,} verbatim, the rest re-cased/re-spaced), {cfg['distinct']:,} distinct; "
        f"sample {cfg['sample']:,} rows, seed {cfg['seed']}, {cfg['workers']} workers.", "",
        "| pipeline | rows/s (wall) | wall s | rows per CPU-s | CPU s | peak RSS GiB (process) | "
        "peak RSS GiB (largest worker) | peak RSS GiB (tree sum, sampled) | rows written |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        row("sftpack recipe", rec), row("datasets baseline", base), "",
        f"- speed ratio (recipe / datasets): **{result['ratio']['rows_per_s']:.2f}x** wall, "
        f"{result['ratio']['rows_per_cpu_s']}x per CPU-second; peak RSS ratio "
        f"(datasets / recipe, tree): {result['ratio']['peak_rss_tree']:.2f}x",
        f"- recipe by pass: read + parse + hash {rec['pass_s'][0]:.2f} s "
        f"({cfg['rows'] / rec['pass_s'][0]:,.0f} rows/s), dedup + sample decisions and the rest "
        f"{rec['pipeline_s'] - sum(rec['pass_s']):.2f} s, write {rec['pass_s'][-1]:.2f} s",
        f"- same rows written by both, in the same order: {result['checks']['same_output']}; distinct rows "
        f"found = known: {result['checks']['distinct_matches']}",
        f"- targets: >= {TARGET_ROWS_PER_S:,} rows/s: {result['targets']['rows_per_s_met']}; peak RSS <= 2 GiB: "
        f"{result['targets']['peak_rss_met']}",
        f"- load average before / after: {result['load_average']['before']} / {result['load_average']['after']} "
        f"({result['environment']['cpu_count']} CPUs)",
        f"- git {env['git_sha']}{' (with uncommitted changes)' if env.get('git_dirty') else ''}, "
        f"Python {env['python']}, {', '.join(f'{k} {v}' for k, v in env['packages'].items() if v)}", "",
        "Rebuild: `python benchmarks/recipe_dedup_bench.py DIR --report-only`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/bench/recipe_dedup", type=Path,
                        help="results folder (default runs/bench/recipe_dedup)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dup-share", type=float, default=0.3, help="share of rows that repeat an earlier one")
    parser.add_argument("--sample", type=int, default=500_000, help="rows kept by the sample step")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--text-scale", type=int, default=1,
                        help="repeat each answer this many times (memory must not grow with it)")
    parser.add_argument("--keep-data", action="store_true", help="keep OUT/work (the data and outputs)")
    parser.add_argument("--report-only", action="store_true", help="rebuild report.md from result.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--child", choices=["recipe", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.child:
        child_main(args)
        return
    if args.report_only:
        result = json.loads((args.out / "result.json").read_text())
        (args.out / "report.md").write_text(report(result))
        print(args.out / "report.md")
        return
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        load_before = [round(x, 2) for x in os.getloadavg()]
        data = generate(work / "bench.jsonl", args.rows, args.dup_share, not args.quiet, args.text_scale)
        print(f"generated {data['rows']:,} rows ({data['bytes'] / 1e6:,.0f} MB), {data['distinct']:,} distinct",
              file=sys.stderr)
        rec = run_child("recipe", args)
        base = run_child("baseline", args)
        load_after = [round(x, 2) for x in os.getloadavg()]
        for r in (rec, base):
            r["rows_per_s"] = round(args.rows / r["pipeline_s"])
            r["rows_per_cpu_s"] = round(args.rows / r["cpu_s"]) if r["cpu_s"] > 0 else None
        result = {
            "schema_version": SCHEMA_VERSION,
            "config": {**data, "dup_share": args.dup_share, "sample": args.sample, "seed": SEED,
                       "workers": args.workers},
            "recipe": rec, "baseline": base,
            "ratio": {"rows_per_s": round(rec["rows_per_s"] / base["rows_per_s"], 3),
                      "rows_per_cpu_s": round(rec["rows_per_cpu_s"] / base["rows_per_cpu_s"], 3)
                      if rec["rows_per_cpu_s"] and base["rows_per_cpu_s"] else None,
                      "peak_rss_tree": round(base["peak_rss_tree_sampled_bytes"]
                                             / max(rec["peak_rss_tree_sampled_bytes"], 1), 3)},
            "checks": {"same_output": _same_rows(rec["output"], base["output"]),
                       "distinct_matches": rec["distinct"] == data["distinct"] == base["distinct"]},
            "targets": {"rows_per_s_met": rec["rows_per_s"] >= TARGET_ROWS_PER_S,
                        "peak_rss_met": max(rec["peak_rss_tree_sampled_bytes"], rec["peak_rss_self_bytes"])
                        <= TARGET_PEAK_RSS_BYTES},
            "load_average": {"before": load_before, "after": load_after},
            "environment": environment(),
        }
        for r in (rec, base):
            r["pipeline_s"] = round(r["pipeline_s"], 3)
            del r["output"]
        (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "report.md").write_text(report(result))
        print(report(result))
    finally:
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
