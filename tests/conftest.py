"""Shared test settings: offline, no telemetry, CPU, few threads (CI has 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CAUSALVQ_FUSED_KERNEL", "0")  # the torch path, unless a test builds the kernel
PARALLEL = bool(os.environ.get("PYTEST_XDIST_WORKER"))  # one of several test processes sharing the cores
if PARALLEL:  # one thread each, in this process and the ones it starts
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1 if PARALLEL else min(2, torch.get_num_threads()))


import base64  # noqa: E402
import io  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def api_pixels(value: str | dict) -> np.ndarray:
    """The pixels of an image output as an API client receives it: a downloaded file's path, or the app's inline
    images (``app.InlineImage``: a dict whose ``url`` is a base64 PNG data URL)."""
    if isinstance(value, dict):
        head, _, payload = value["url"].partition(",")
        assert head.startswith("data:image/") and head.endswith(";base64"), head[:40]
        with Image.open(io.BytesIO(base64.b64decode(payload))) as img:
            return np.asarray(img)
    with Image.open(value) as img:
        return np.asarray(img)


@pytest.fixture
def pairwise_args() -> list[torch.Tensor]:
    """Seeded double inputs of ``pairwise_score`` with an edge feature: X, Y, a, w, e (b 2, n 5, m 6, h 3, g 4)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 5, 3, 4), (2, 6, 3, 4), (1, 3, 4), (2, 5, 6), (3, 4)]
    return [torch.randn(*s, dtype=torch.double, generator=gen).requires_grad_() for s in shapes]
