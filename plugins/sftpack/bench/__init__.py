"""Benchmark harness: LLaMA-Factory vs ms-swift on the same workload, measured the same way.

    sftpack bench benchmarks/suites/cpu_tiny.yaml     # run a suite
    sftpack bench report                              # rebuild benchmarks/results/<suite>/report.md + PNGs

Modules: `suite` (YAML schema), `fairness` (pairs normalised by each framework's adapter), `monitor`
(subprocess, wall time, wait4 max RSS, psutil PSS of the tree, NVML on GPU), `flops` (MFU, the time model),
`plan` (`--plan`), `compare` (when two runs' times can be compared), `results` (result.json schema), `runner`
(a suite through sftpack.training, overhead), `report` (Markdown + PNG from stored results), `cli`. Framework
knowledge is in sftpack.frameworks, provenance in sftpack.provenance. See benchmarks/README.md. Importing
this package imports no framework, torch or CUDA.
"""
