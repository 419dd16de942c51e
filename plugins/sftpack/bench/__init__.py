"""Benchmark harness: LLaMA-Factory vs ms-swift on the same workload, measured the same way.

    sftpack bench benchmarks/suites/cpu_tiny.yaml     # run a suite
    sftpack bench report                              # rebuild benchmarks/results/<suite>/report.md + PNGs

Modules: `suite` (YAML schema), `fairness` (pairs normalised with sftpack.parity), `monitor` (subprocess,
wall time, wait4 max RSS, psutil PSS of the tree, NVML on GPU), `logs` (trainer_log.jsonl / logging.jsonl),
`environment` (versions, GPU, CPU, git), `results` (result.json schema), `runner` (a suite, overhead),
`report` (Markdown + PNG from stored results), `cli`. See benchmarks/README.md. Importing this package
imports no framework, torch or CUDA.
"""
