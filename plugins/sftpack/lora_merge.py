"""Merge a LoRA adapter into its base model and save a full model folder (weights, config, tokenizer), as
`llamafactory-cli export` / `swift export --merge_lora true` do, with PEFT's own `merge_and_unload`:

    python -m sftpack.lora_merge BASE_MODEL ADAPTER OUT_DIR

A pipeline stage that starts from an earlier stage's LoRA adapter with `adapter: merge` trains on this folder.
The folder is written beside OUT_DIR and renamed into place: it is complete or absent.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sftpack.errors import SftpackError


def merge(base: Path, adapter: Path, out: Path) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise SftpackError(f"{adapter}: no adapter_config.json (not a LoRA adapter folder)")
    out = Path(out)
    if out.exists():
        raise SftpackError(f"{out}: exists; the merged model is written to a new folder")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(partial))
    tokenizer_source = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(partial))
    partial.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        print(merge(Path(args[0]), Path(args[1]), Path(args[2])))
    except SftpackError as err:
        print(f"sftpack: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
