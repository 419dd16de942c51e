"""The `sftpack eval` command line: `add_parser(subparsers)` adds it to the sftpack CLI.

    sftpack eval --model Qwen/Qwen2.5-1.5B --tuned lf=saves/qwen2.5-1.5b/lora/gsm8k \
        --tuned swift=saves/qwen2.5-1.5b/lora/gsm8k-swift/checkpoint-1401 --tasks gsm8k-local,gsm8k-local-chat

lm-eval's own spellings are accepted: `--model_args`, `--num_fewshot`, `--batch_size`, `--gen_kwargs`,
`--output_path`, and `--include_path DIR`, which ADDS a task folder to the shipped eval_tasks/ (repeatable; a task
of the same name in DIR wins, as in lm-eval). `--model` is the base model here; lm-eval's `--model hf|vllm|...`
(the backend type) is sftpack's `--backend`, and `--model hf` is an error saying so rather than a model named "hf".
`--model_args pretrained=M` without `--model` is `--model M`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from sftpack.errors import SftpackError

EPILOG = """\
examples:
  # base few-shot + chat format, and two adapters, 50 questions each (run where dataset_info/ is):
  sftpack eval --model Qwen/Qwen2.5-1.5B --tuned lf=saves/lf-lora --tuned swift=saves/swift-lora/checkpoint-100 \\
      --tasks gsm8k-local,gsm8k-local-chat --limit 50
  # shot counts users compare; retention on two CMMLU subjects from your CSV folder:
  sftpack eval --model M --tuned A --tasks gsm8k-local --num-fewshot 0,5,8
  sftpack eval --model M --tuned A --tasks cmmlu-local-agronomy,cmmlu-local-anatomy --cmmlu-dir /data/cmmlu
  # vLLM (LoRA via lora_local_path), 2 GPUs data parallel; or 4 GPUs with the hf backend:
  sftpack eval --backend vllm --data-parallel-size 2 --model M --tuned A
  sftpack eval --num-processes 4 --device cuda --model M --tuned A
  # a model served behind an OpenAI-compatible completions endpoint (vLLM: --lora-modules lf=saves/lf-lora):
  sftpack eval --backend local-completions --base-url http://localhost:8000/v1/completions \\
      --model Qwen/Qwen2.5-1.5B --tuned lf
  # lm-eval's spellings; your own task folder added to the shipped tasks:
  sftpack eval --backend hf --model_args pretrained=Qwen/Qwen2.5-1.5B --tasks my-task --include_path my_tasks \\
      --num_fewshot 5 --batch_size 8
"""

# lm-eval 0.4.13's model types (lm_eval/models/*: register_model): what `lm_eval --model` means. sftpack's --model is
# the base model, so one of these given there is said, not looked up as a model.
LM_EVAL_MODEL_TYPES = (
    "hf", "hf-auto", "huggingface", "hf-multimodal", "hf-mistral3", "hf-audiolm-qwen", "vllm", "vllm-vlm", "sglang",
    "sglang-generate", "local-completions", "local-chat-completions", "openai-completions", "openai-chat-completions",
    "azure-openai-chat-completions", "anthropic-completions", "anthropic-chat", "anthropic-chat-completions",
    "litellm", "litellm-chat", "litellm-chat-completions", "gguf", "ggml", "mamba_ssm", "nemo_lm", "megatron_lm",
    "neuronx", "openvino", "onnxruntime", "onnxruntime-genai", "ipex", "habana", "steered", "textsynth",
    "watsonx_llm", "trtllm", "winml", "dummy",
)


DESCRIPTION = ("Evaluate a base model and any number of LoRA adapters or merged models (LLaMA-Factory or ms-swift) "
               "with lm-eval, and write one JSON report and one Markdown table with each tuned model's delta to the "
               "base, plus the GSM8K format rate.")


def _shots(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def _limit(text: str) -> int | float:
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value


def _tasks(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected at least one task name")
    return names


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `eval` options to `parser`."""
    from sftpack.evaluate.runner import DEFAULT_TASKS
    from sftpack.frameworks import EVAL_TASKS, LF_LORA_CONFIG, REPO_ROOT

    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--model",
                      help="base model: hub id or folder (with local-completions: the served model name). Not "
                           "lm-eval's --model (the backend type: use --backend hf|vllm|local-completions); "
                           "--model_args pretrained=M stands for --model M")
    what.add_argument("--tuned", action="extend", nargs="+", default=[], metavar="[LABEL=]PATH",
                      help="a LoRA adapter folder (adapter_config.json; loaded on --model) or a merged model folder "
                           "(config.json); repeatable. LABEL names its table column (default: the folder name)")
    what.add_argument("--no-base", action="store_true", help="do not evaluate --model itself (no delta column)")
    what.add_argument("--skip-base-check", action="store_true",
                      help="evaluate an adapter on --model even though its adapter_config.json names another base")
    what.add_argument("--tasks", type=_tasks,
                      help=f"comma-separated lm-eval tasks or groups (default: {','.join(DEFAULT_TASKS)}, none "
                           "with --dataset); see eval_tasks/README.md")
    what.add_argument("--dataset", type=_tasks, action="extend", default=[], metavar="NAME[,NAME...]",
                      help="a dataset_info.json entry (alpaca or sharegpt, from `sftpack prepare`, a recipe or your "
                           "own) to evaluate as it was trained: its task is generated into OUT/tasks/ (the prompt "
                           "rendered by --train-config's framework, template and system prompt; exact match, "
                           "token F1, ROUGE-L, or option-letter accuracy for multiple choice); repeatable")
    what.add_argument("--train-config", metavar="CONFIG",
                      help="with --dataset: the LLaMA-Factory or ms-swift training YAML whose template and system "
                           f"prompt the model was trained with (default: {LF_LORA_CONFIG.relative_to(REPO_ROOT)})")
    what.add_argument("--dataset-dir", metavar="DIR",
                      help="with --dataset: the folder of its dataset_info.json (default: --train-config's "
                           "dataset_dir, else dataset_info, against --workdir)")
    what.add_argument("--num-fewshot", "--num_fewshot", dest="num_fewshot", type=_shots, metavar="N[,N...]",
                      help="override the tasks' shot counts; several values = one lm-eval run each (default: "
                           "each task's own)")
    what.add_argument("--limit", type=_limit,
                      help="documents per task (an integer, or a fraction < 1); for smoke tests, not for real scores")
    where = parser.add_argument_group("where")
    where.add_argument("--out", "--output_path", dest="out", default="runs/eval",
                       help="output folder (default: ./runs/eval)")
    where.add_argument("--workdir", default=".",
                       help="folder lm-eval runs in: task data files such as dataset_info/gsm8k_test.jsonl resolve "
                            "against it (default: the current directory)")
    where.add_argument("--include-path", "--include_path", dest="include_path", action="append", default=[],
                       metavar="DIR",
                       help=f"a folder of lm-eval task YAMLs ADDED to the shipped tasks ({EVAL_TASKS}); repeatable; "
                            "a task there named like a shipped one replaces it (lm-eval's rule). The folders are "
                            "copied into OUT/include_path/ for lm-eval, which reads one --include_path")
    where.add_argument("--cmmlu-dir", help="folder of CMMLU CSVs (dev/, test/) for the cmmlu-local tasks")
    where.add_argument("--mmlu-dir", help="folder of MMLU CSVs (dev/, test/: <subject>_dev.csv ...) for the "
                                          "mmlu-local tasks")
    where.add_argument("--squad-file", help="a SQuAD-format JSON file (v1.1 or v2.0) for the squad-local task")
    where.add_argument("--metadata", help="JSON object passed to lm-eval --metadata (merged with --cmmlu-dir)")
    how = parser.add_argument_group("how")
    how.add_argument("--backend", default="hf", choices=["hf", "vllm", "local-completions"],
                     help="lm-eval model type (default: hf)")
    how.add_argument("--device", help="hf device: cpu, cuda, cuda:1 (default: lm-eval's, cuda when available)")
    how.add_argument("--batch-size", "--batch_size", dest="batch_size", default="1",
                     help="lm-eval --batch_size: N, auto or auto:N (default: 1)")
    how.add_argument("--dtype", help="model dtype for hf/vllm: auto, float32, bfloat16, float16")
    how.add_argument("--gen-kwargs", "--gen_kwargs", dest="gen_kwargs",
                     help="lm-eval --gen_kwargs overriding the tasks', e.g. max_gen_toks=64")
    how.add_argument("--num-processes", type=int, default=1,
                     help="hf: data parallel over N GPUs via `accelerate launch -m lm_eval` (default: 1)")
    how.add_argument("--data-parallel-size", type=int, default=1, help="vllm: model replicas (default: 1)")
    how.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per replica (default: 1)")
    how.add_argument("--base-url", help="local-completions: the server's completions URL")
    how.add_argument("--tokenizer", help="local-completions: HF tokenizer of the served model (default: --model)")
    how.add_argument("--num-concurrent", type=int, default=1, help="local-completions: parallel requests")
    how.add_argument("--offline", action="store_true",
                     help="set HF_HUB_OFFLINE/HF_DATASETS_OFFLINE/TRANSFORMERS_OFFLINE for the lm-eval runs")
    how.add_argument("--model-args", "--model_args", dest="model_args",
                     help="more lm-eval model_args, appended: e.g. parallelize=True (a model split over the GPUs), "
                          "max_length=4096; trust_remote_code=True only for a model that ships its own code (off by "
                          "default; Qwen2.5 needs none). pretrained=M is --model M; adapters are --tuned, not peft=")
    how.add_argument("--lm-eval-args", default="", help="more lm-eval arguments, one shell-quoted string")
    how.add_argument("--quiet", action="store_true", help="do not echo lm-eval's output (it is still logged)")
    parser.set_defaults(func=cmd_eval)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` subcommand to an argparse subparsers object (the sftpack CLI's)."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a base model and tuned adapters/models with lm-eval; JSON + Markdown table",
        description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure(parser)


def base_model(args: argparse.Namespace) -> tuple[str, str | None]:
    """(the base model, the model_args left to append) from --model and --model_args, in lm-eval's spellings too.

    `--model hf` (lm-eval's backend type) is an error pointing to --backend; `--model_args pretrained=M` without
    --model is --model M; `peft=` / `lora_local_path=` in --model_args are errors pointing to --tuned."""
    parts = [part for part in (args.model_args or "").split(",") if part.strip()]
    given = {key.strip(): value.strip() for key, _, value in (part.partition("=") for part in parts)}
    for key in ("peft", "lora_local_path"):
        if key in given:
            raise SftpackError(f"--model_args {key}={given[key]}: sftpack sets the adapter itself; give it as "
                               f"--tuned {given[key]} (evaluated beside the base model, with a delta column)")
    pretrained = given.get("pretrained")
    rest = ",".join(part for part in parts if part.partition("=")[0].strip() != "pretrained") or None
    model = args.model
    if model in LM_EVAL_MODEL_TYPES and not Path(model).exists():
        shown = pretrained or "MODEL"
        raise SftpackError(f"--model {model}: that is lm-eval's model type; in sftpack eval --model is the base model "
                           f"(hub id or folder) and the type is --backend: sftpack eval --backend {model} "
                           f"--model {shown}" + ("" if model in ("hf", "vllm", "local-completions") else
                                                 " (sftpack runs hf, vllm and local-completions)"))
    if model is None and pretrained is None:
        raise SftpackError("no base model: give --model MODEL (hub id or folder), or lm-eval's "
                           "--model_args pretrained=MODEL")
    if model is not None and pretrained is not None and pretrained != model:
        raise SftpackError(f"--model {model} and --model_args pretrained={pretrained} name two base models; give one")
    return model or pretrained, rest


def settings_from_args(args: argparse.Namespace):
    from sftpack.evaluate.runner import DEFAULT_TASKS, RETENTION_DATA, Settings

    metadata = {}
    if args.metadata:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as err:
            raise SftpackError(f"--metadata: not valid JSON ({err.msg}): {args.metadata}") from None
        if not isinstance(metadata, dict):
            raise SftpackError(f"--metadata must be a JSON object, got {args.metadata}")
    for family, value in (("cmmlu-local", args.cmmlu_dir), ("mmlu-local", args.mmlu_dir),
                          ("squad-local", args.squad_file)):
        if value:
            metadata[RETENTION_DATA[family][0]] = str(Path(value).expanduser().resolve())
    tasks = args.tasks if args.tasks is not None else ([] if args.dataset else list(DEFAULT_TASKS))
    return Settings(
        tasks=tasks, datasets=list(args.dataset), train_config=args.train_config, dataset_dir=args.dataset_dir,
        num_fewshot=args.num_fewshot, limit=args.limit, backend=args.backend, device=args.device,
        batch_size=args.batch_size, dtype=args.dtype, gen_kwargs=args.gen_kwargs, add_include=list(args.include_path),
        workdir=args.workdir, metadata=metadata, num_processes=args.num_processes,
        data_parallel_size=args.data_parallel_size, tensor_parallel_size=args.tensor_parallel_size,
        base_url=args.base_url, tokenizer=args.tokenizer, num_concurrent=args.num_concurrent,
        extra_model_args=base_model(args)[1], extra_args=shlex.split(args.lm_eval_args))


def cmd_eval(args: argparse.Namespace) -> int:
    import os

    from sftpack.extras import require

    model = base_model(args)[0]
    require("lm_eval", what="sftpack eval")
    from sftpack.evaluate.results import render_markdown
    from sftpack.evaluate.runner import run_eval

    env = dict(os.environ)
    if args.offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    report = run_eval(model, args.tuned, Path(args.out), settings_from_args(args), include_base=not args.no_base,
                      skip_base_check=args.skip_base_check, env=env, echo=not args.quiet)
    out = Path(args.out).resolve()
    print("\n" + render_markdown(report))
    print(f"report: {out / 'eval.json'}\ntable:  {out / 'eval.md'}\nlogs:   {out / 'logs'}  ({report['wall_s']} s)")
    return 0

