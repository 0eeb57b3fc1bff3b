"""Keep every dependency offline: import this module before any of them.

Several libraries phone home unless told not to: the Hugging Face hub (transformers, and
faster-whisper when given a model *name*), Flower (telemetry and an update check) and Ray (usage
stats). parley never needs any of that: models load from local paths only. ``setdefault`` keeps
a user's explicit choice, so someone who really wants the hub can still opt in.
"""

from __future__ import annotations

import os

OFFLINE_ENVIRONMENT: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Without this, Ray 2.5x swaps an explicit 127.0.0.1 for the external address (found with a
    # public-DNS probe from C++, where no audit hook sees it) and listens on every interface.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Silences a FutureWarning Ray raises on import about accelerator variables.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}

for _name, _value in OFFLINE_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
