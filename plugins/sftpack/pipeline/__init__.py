"""Pipelines: one command from data to a report (`sftpack run PIPELINE.yaml`).

schema.py  the pipeline YAML as dataclasses (unknown keys are errors)
stages.py  stage runner: outputs + done-markers, skip finished stages, --force STAGE, stop on failure
steps.py   the stages: model, data, train_<framework> (measured by sftpack.bench), eval (sftpack eval), report
report.py  report.md, summary.json and PNG plots, rebuilt from the stage outputs
offline.py whether the run may reach the hubs (HF_HUB_OFFLINE & co., --offline): one helper decides
cli.py     `add_parser(subparsers)` for `sftpack run`
"""

from sftpack.pipeline.cli import add_parser, run_pipeline

__all__ = ["add_parser", "run_pipeline"]
