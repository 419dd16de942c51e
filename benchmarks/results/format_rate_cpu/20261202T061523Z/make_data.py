"""Make the two compact-solution data folders of this session from the shipped GSM8K sample.

    .venv/bin/python benchmarks/results/format_rate_cpu/20261202T061523Z/make_data.py /tmp/exp2

<out>/compact: train answers cut to their final line ('#### 72').
<out>/eqs: each train answer's calculator equations (the `<<...>>` contents), one per line, then the final line
('48/2=24\\n48+24=72\\n#### 72'; 37 characters on average). Test rows are copied unchanged in both.
Each run's pipeline (pipelines/) is tiny_cpu.yaml with data.source set to one of these folders.
"""

import json
import re
import shutil
import sys
from pathlib import Path

from sftpack.samples import sample_dir


def main(out: Path) -> None:
    src = sample_dir("gsm8k")
    for name in ("compact", "eqs"):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        with (src / "train.jsonl").open(encoding="utf-8") as rows, (folder / "train.jsonl").open("w") as dst:
            for line in rows:
                row = json.loads(line)
                final = row["answer"].rstrip().rsplit("\n", 1)[-1]
                steps = re.findall(r"<<([^>]*)>>", row["answer"]) if name == "eqs" else []
                row["answer"] = "\n".join(steps + [final])
                dst.write(json.dumps(row) + "\n")
        shutil.copy(src / "test.jsonl", folder / "test.jsonl")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
