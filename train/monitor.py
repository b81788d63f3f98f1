"""What a run reports: ``metrics.jsonl`` (one JSON object per log step) and the loss-curve plots.

A record is ``{"stage": 1, "step": 50, "lr": ..., "images_per_s": ..., "loss": ..., "<part>": ...}``; stage-2
parts are prefixed by the batch's use (``base/ce``, ``action/accuracy``, ``retrieval/loss``). Steps count
completed optimiser steps; ``images_per_s`` counts samples of all processes (stage 2: code grids or pairs);
``loss`` is averaged over processes, the parts are rank 0's. Plots are drawn on a matplotlib Agg canvas (no pyplot) from
the log file, so they can be redrawn at any time (``plot_stage``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from train.checkpoint import atomic_write_text, write_error

NOT_PLOTTED = frozenset({"stage", "step", "lr", "images_per_s", "time_s", "data_digests", "event"})


class MetricsLog:
    """Append-only JSON-lines log; ``rewind`` drops the records a resumed run will write again."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        return out

    def has_stage(self, stage: int) -> bool:
        return any(r.get("stage") == stage for r in self.records())

    def rewind(self, stage: int, step: int) -> None:
        """Keep only records before ``(stage, step)``: those a resumed stage will not write again."""
        if not self.path.is_file():
            return
        keep = [r for r in self.records() if r.get("stage", 0) < stage or
                (r.get("stage") == stage and r.get("step", 0) <= step)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def stage_time(self, stage: int) -> dict[str, Any] | None:
        """``{"steps", "seconds", "runs"}`` of ``stage``: its last logged step, and the training loop's clock at
        its last record summed over the runs that wrote it (a resumed run's clock starts again at 0, from a
        checkpoint the log was rewound to); ``None`` when the stage logged no step."""
        times = [(r["step"], r["time_s"]) for r in self.records()
                 if r.get("stage") == stage and "time_s" in r and "step" in r]
        if not times:
            return None
        ends, last = [], None
        for _, t in times:
            if last is not None and t < last:  # the clock went back: a resumed run begins
                ends.append(last)
            last = t
        ends.append(last)
        return {"steps": times[-1][0], "seconds": round(sum(ends), 1), "runs": len(ends)}

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(record, allow_nan=True) + "\n")
        except OSError as err:  # a full disk: name the file (a torn last line is skipped by ``records``)
            raise write_error(self.path, err) from err


class WindowMeans:
    """Running means of named values since the last ``pop`` (each name over the steps that reported it)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] += value
            self.counts[key] += 1

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return out


def plot_stage(log: MetricsLog, stage: int, path: str | Path) -> Path | None:
    """Draw the logged quantities of ``stage`` against the step; ``None`` if nothing was logged.

    One panel per quantity; stage-2 parts of the same quantity (``base/ce``, ``action/ce``) share a panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [r for r in log.records() if r.get("stage") == stage and "event" not in r]
    keys = sorted({k for r in records for k, v in r.items()
                   if k not in NOT_PLOTTED and isinstance(v, (int, float))})
    if not keys:
        return None
    panels: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        panels[key.rsplit("/", 1)[-1]].append(key)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (quantity, series) in zip(axes.flat, sorted(panels.items())):
        for key in series:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None,
                    label=key.split("/")[0] if "/" in key else "all")
        ax.set_title(quantity, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(series) > 1 or "/" in series[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"stage {stage}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    return path
