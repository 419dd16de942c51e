"""ms-swift plugin: register every `dataset_info/dataset_info.json` entry under its LLaMA-Factory name.

    swift sft train_configs/swift/qwen_lora_gsm8k.yaml        # the YAML lists this file in external_plugins
    swift sft ... --external_plugins plugins/sftpack_swift_datasets.py --dataset gsm8k_train

Swift puts this file's folder (plugins/) first on sys.path and imports it by its file name, so `sftpack`
imports from this checkout even when it is not installed. Which dataset_info.json: see
`sftpack.swift_datasets` ($SFTPACK_DATASET_INFO, else ./dataset_info/ of the current directory).

An entry Swift cannot be served (preference data, a missing file, ...) is skipped with one warning line; the
run stops with one error line only when it asks for such an entry (or for an entry while the file is missing).

It also ends torch.distributed's process group when the process exits (sftpack.frameworks.swift
.end_process_group_at_exit: a DDP rank could abort at exit after a finished training).
"""

import sys

from sftpack.errors import SftpackError
from sftpack.frameworks.swift import end_process_group_at_exit
from sftpack.swift_datasets import plugin_main

end_process_group_at_exit()
try:
    plugin_main()
except SftpackError as err:
    sys.exit(f"sftpack: error: {err}")
