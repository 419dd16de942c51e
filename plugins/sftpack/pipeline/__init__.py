"""Pipelines: one command from data to a report (`sftpack run PIPELINE.yaml`).

schema.py  the pipeline YAML as typed dataclasses checked by sftpack.spec (file:line errors, before any work)
stages.py  stage runner: done-markers keyed by each stage's resolved inputs (an unchanged stage is skipped, a
           changed one re-runs with the stages that read it, and says why), --force STAGE, stop on failure
steps.py   the stages: model, data, train_<framework> (sftpack.training, as bench), eval (sftpack eval), report;
           the fallbacks a pipeline allows, printed before the first stage
report.py  report.md, summary.json and PNG plots, rebuilt from the stage outputs
offline.py whether the run may reach the hubs (HF_HUB_OFFLINE & co., --offline): one helper decides
cli.py     `add_parser(subparsers)` for `sftpack run`
"""

from sftpack.pipeline.cli import add_parser, run_pipeline

__all__ = ["add_parser", "run_pipeline"]
