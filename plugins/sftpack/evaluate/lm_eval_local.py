"""lm-eval's own command line, with only the --include_path tasks indexed: `python -m sftpack.evaluate.lm_eval_local
ARGS` is `lm_eval ARGS` (the same `lm_eval.__main__.cli_evaluate`: parsing, model, requests, scores, output files),
except that lm-eval's task index is built with `TaskManager(include_defaults=False)`, lm-eval's own switch.

Why: the `lm_eval` script indexes all of lm-eval's built-in tasks before it looks at the ones asked for: 14,000 YAML
files parsed, ~6 s of CPU at every start (lm-eval 0.4.13, one core), more than the whole evaluation of a few
questions on a small model. `sftpack eval` runs this entry only when every task it was given is in its task folders
(checked before: sftpack.evaluate.tasks.check_tasks); a built-in task name runs the plain `lm_eval`. The plain
command stays in eval.json beside each run (`lm_eval_command`) for a run by hand; it gives the same results.
"""

from __future__ import annotations

import sys


def main() -> int | None:
    from lm_eval.tasks import manager

    index_everything = manager.TaskManager.__init__

    def local_only(self, *args, include_defaults: bool = False, **kwargs) -> None:
        index_everything(self, *args, include_defaults=include_defaults, **kwargs)

    manager.TaskManager.__init__ = local_only
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    return cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())
