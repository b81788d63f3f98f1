"""Shared test settings: offline, no telemetry, CPU, few threads (CI has 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CAUSALVQ_FUSED_KERNEL", "0")  # the torch path, unless a test builds the kernel

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
