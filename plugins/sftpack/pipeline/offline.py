"""Whether a pipeline run may reach the model and dataset hubs: one helper decides, for every stage.

A run is offline when the environment says so -- `HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE` or `HF_DATASETS_OFFLINE`
set to 1/true/yes/on, the values huggingface_hub accepts -- or when `sftpack run --offline` sets them. Offline, the
model and data stages make no hub call at all: they skip the download at once and take the declared fallbacks
(`model.build_shape`, `data.fallback_source`), say so at the start of the stage and record it as the stage's
`fallback_reason` ("offline: HF_HUB_OFFLINE=1, ...") in its done.json and in the report.

    HF_HUB_OFFLINE=1 sftpack run benchmarks/pipelines/qwen2.5_1.5b_gpu.yaml     # or: sftpack run ... --offline
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

# The order is the one the reason names first when several are set.
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}
# Imported in-process by a stage that downloads; each reads the offline variables once, at import.
HUB_MODULES = ("huggingface_hub", "datasets", "modelscope")


def offline_reason(environ: Mapping[str, str] | None = None) -> str | None:
    """'offline: HF_HUB_OFFLINE=1' when `environ` (default os.environ) turns the hubs off, else None (online)."""
    env = os.environ if environ is None else environ
    for var in OFFLINE_VARS:
        value = env.get(var, "")
        if value.strip().lower() in _TRUE:
            return f"offline: {var}={value}"
    return None


def go_offline(flag: bool = False, environ: MutableMapping[str, str] | None = None) -> str | None:
    """When `flag` (`--offline`) or `environ` says offline, set all of OFFLINE_VARS in `environ` (default os.environ).

    Call it before anything imports huggingface_hub, datasets or modelscope in this process: they read the variables
    at import, so all three then agree and none retries a hub. Returns the reason, or None when online.
    """
    env = os.environ if environ is None else environ
    if flag and offline_reason(env) is None:
        env["HF_HUB_OFFLINE"] = "1"
    reason = offline_reason(env)
    if reason is not None:
        for var in OFFLINE_VARS:
            if env.get(var, "").strip().lower() not in _TRUE:
                env[var] = "1"
    return reason
