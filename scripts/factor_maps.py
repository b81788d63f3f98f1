"""Draw where each action acts on the code grid: the mean intervention mask and the mean changed nodes per action.

    python scripts/factor_maps.py --checkpoint assets/causalvq-shapes3d --out docs/figures/factor_maps.png

One-step pairs of the test split (the split the checkpoint's recipe names, seed 0), deterministic masks
(``causalvq.metrics.structure.factor_maps``). Each factor gets a row: for "+" and "−" the share of pairs whose mask
holds each node ("mask") and the share whose step changes it ("changed"), beside a mean test image, so the floor,
wall and object regions can be told apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from causalvq.data import load_dataset, render_images
from causalvq.data.pairs import TransitionSampler
from causalvq.metrics.structure import FactorMaps, factor_maps
from causalvq.model import CausalVQ


def draw(maps: FactorMaps, mean_image: np.ndarray, factor_names: tuple[str, ...], title: str) -> Figure:
    """The figure: one row per factor, columns mean image, mask +, changed +, mask −, changed −."""
    F = len(factor_names)
    fig = Figure(figsize=(10.0, 2.0 * F + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(F, 5, squeeze=False)
    columns = ("mean test image", "mask  +", "changed  +", "mask  −", "changed  −")
    image = None
    for f, name in enumerate(factor_names):
        panels = (None, maps.mask[f], maps.changed[f], maps.mask[F + f], maps.changed[F + f])
        for c, (ax, panel) in enumerate(zip(axes[f], panels)):
            ax.set_xticks([])
            ax.set_yticks([])
            if f == 0:
                ax.set_title(columns[c], fontsize=9)
            if panel is None:
                ax.imshow(mean_image, interpolation="nearest")
                ax.set_ylabel(name, fontsize=10)
                continue
            grid = panel[0].numpy()  # (h, w): the first codebook
            image = ax.imshow(grid, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
            pairs = int(maps.pairs[f if c < 3 else F + f])
            ax.set_xlabel(f"{pairs} pairs", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.0, 0.0, 0.88, 1.0))
    if image is not None:
        bar = fig.add_axes((0.9, 0.3, 0.015, 0.4))
        fig.colorbar(image, cax=bar, label="share of the action's pairs")
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--out", default="docs/figures/factor_maps.png")
    parser.add_argument("--pairs", type=int, default=1200, help="one-step test pairs (about 100 per action)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = CausalVQ.from_pretrained(args.checkpoint)
    dataset = load_dataset("shapes3d")
    sampler = TransitionSampler(dataset, split="test")
    x, y, actions = sampler.sample_pairs(args.pairs, np.random.default_rng(0))
    size = model.config.image_size
    images = render_images(dataset, x, size)
    codes_x = torch.cat([model.encode_codes(images[i:i + 256]) for i in range(0, len(x), 256)])
    codes_y = torch.cat([model.encode_codes(render_images(dataset, y[i:i + 256], size)) for i in range(0, len(y), 256)])
    maps = factor_maps(model, codes_x, codes_y, torch.as_tensor(actions, dtype=torch.long))
    mean_image = images.mean(0).permute(1, 2, 0).numpy()
    fig = draw(maps, mean_image, model.config.factor_names,
               f"{Path(args.checkpoint).name}: where each action intervenes (mask) and what it changes, "
               f"{len(actions)} test pairs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
