"""lm-eval `process_results` of squad-local (`!function utils.process_results_squad` resolves next to the YAML):
sftpack's SQuAD exact match and F1, defined once in sftpack.evaluate.metrics (sftpack must be installed)."""

from sftpack.evaluate.metrics import process_results_squad

__all__ = ["process_results_squad"]
