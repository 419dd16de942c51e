"""sftpack: converters, configs, eval tasks and benchmarks for SFT with LLaMA-Factory and ms-swift.

Importing this package imports no framework (torch, transformers, llamafactory, swift, lm_eval):
those are imported inside the functions that need them.
"""

__version__ = "0.1.0"
