"""CPU time of one stage-2 training step of each use (base, action, retrieval), forward and backward, for the 64-px
structure recipes' transition layer at several graph widths: what a cheaper stage 2 can save.

    python bench/bench_stage2_step.py [--graph-width 96 48] [--codebook-size 128] [--repeats 3] [--torch]
                                      [--set intervened_weight=1.0 intervened_own_graph=true ...]

One thread, the fused kernel unless ``--torch``; random codes on the 8×8 grid (one codebook), a batch of 32 for base
and action steps and of 4 pairs (× all actions) for retrieval steps, as in the ``cpu`` recipe; the structure
switches of the 64-px runs (B20-B24, B26). Prints milliseconds of process time per step and the mean over the
recipe's mode ratio 1 : 6 : 1. ``--set`` changes fields of that ``ModelConfig`` (the cost of a lever; values read as
in ``python -m train --set``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from causalvq import kernels
from causalvq.config import ModelConfig
from causalvq.model import CausalVQ
from train.recipes import RecipeError, parse_override


def step_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph-width", type=int, nargs="+", default=[96, 48])
    p.add_argument("--codebook-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch", action="store_true", help="plain torch instead of the fused kernel")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="ModelConfig fields to change")
    args = p.parse_args()
    try:
        sets = dict(parse_override(item) for item in args.set)  # values read as TOML, as `python -m train --set`
    except RecipeError as err:
        raise SystemExit(str(err)) from None
    torch.set_num_threads(1)
    print(f"fused kernel: {False if args.torch else kernels.enable()}")
    for width in args.graph_width:
        torch.manual_seed(0)
        cfg = ModelConfig(image_size=64, hidden_dims=(32, 64, 64), codebook_size=args.codebook_size,
                          graph_width=width, delta=0.0, change_weight=1.0, mask_weight=5.0, mask_hidden=64,
                          mask_context=1, edge_weight=0.02, edge_budget=8.0)
        try:
            cfg = ModelConfig.from_dict({**dataclasses.asdict(cfg), **sets})
        except (TypeError, ValueError) as err:  # an unknown field or a bad value
            raise SystemExit(f"--set: {err}") from None
        model = CausalVQ(cfg).train()
        g, v = cfg.grid_size, cfg.codebook_size
        cx = torch.randint(0, v, (32, 1, g, g))
        cy = cx.clone()
        cy[:, :, :3] = torch.randint(0, v, (32, 1, 3, g))  # a step changes three rows of the grid
        a = torch.randint(0, cfg.num_actions, (32,))
        m = model
        base = step_ms(lambda m=m, cx=cx: m.base_losses(cx).loss.backward(), args.repeats)
        action = step_ms(lambda m=m, cx=cx, cy=cy, a=a: m.transition_losses(cx, cy, a).loss.backward(), args.repeats)
        retrieval = step_ms(lambda m=m, cx=cx, cy=cy, a=a: m.retrieval_losses(cx[:4], cy[:4], a[:4]).loss.backward(),
                            args.repeats)
        mean = (base + 6 * action + retrieval) / 8
        label = " ".join([f"graph width {width}", *args.set])
        print(f"{label}: base {base:.0f} ms, action {action:.0f} ms, retrieval {retrieval:.0f} ms; "
              f"mean over 1 : 6 : 1 {mean:.0f} ms")


if __name__ == "__main__":
    main()
