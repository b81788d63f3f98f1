"""How much of y's codes can be predicted from x's codes and the action, with and without the neighbours' codes.

    python bench/context_ceiling.py --pool runs/<stage-2 run>/stage2_codes.safetensors [--steps 3000] [--radius 0 1 2]

A diagnostic for the transition layer, outside the model: a small convolutional network reads the one-hot code grid
of x, each cell's position and the action, and predicts each cell's code in y. With ``--radius 0`` every layer is
1×1, so a cell sees only its own code, its position and the action: what a transition layer with an empty graph
can use. With radius r the first layers are (2r + 1)² convolutions (three layers: a cell sees 3r cells around it),
so the neighbours' codes can say where the object is, its hue and its outline. The gap between the two, on the
nodes a step changes, is what a graph could carry at most for this image model (an upper view: the network here
is trained for this only, on the pool's pairs).

The stage-2 code pool (``stage2_codes.safetensors`` of a run folder, train-split pairs) is split into fitting pairs
and held-out pairs (the last ``--held-out``; ``--release`` scores trained transition layers on them too); prints
the held-out code accuracy on changed and kept nodes, overall and per factor, for each radius. CPU time per
radius: a few minutes on one thread.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


class ContextNet(nn.Module):
    """One-hot codes `(b, v, h, w)` + position + action → logits of y's codes `(b, v, h, w)`."""

    def __init__(self, v: int, actions: int, grid: int, radius: int, width: int = 128) -> None:
        super().__init__()
        k = 2 * radius + 1
        self.embed = nn.Conv2d(v, width, 1)
        self.position = nn.Parameter(torch.zeros(1, width, grid, grid))
        self.action = nn.Embedding(actions, width)
        layers = [m for _ in range(3) for m in (nn.Conv2d(width, width, k, padding=radius), nn.ReLU())]
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Conv2d(2 * width, width, 1), nn.ReLU(), nn.Conv2d(width, v, 1))

    def forward(self, onehot: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        h = self.embed(onehot) + self.position + self.action(action)[:, :, None, None]
        return self.out(torch.cat([h, self.body(h)], 1))  # the cell's own terms next to what its context adds


def run(radius: int, pool: dict[str, torch.Tensor], args: argparse.Namespace, names: list[str]) -> None:
    torch.manual_seed(args.seed)
    x, y, a = pool["codes_x"][:, 0].long(), pool["codes_y"][:, 0].long(), pool["actions"]
    v, grid, A = args.codebook_size, x.shape[-1], int(a.max()) + 1
    fit, held = slice(0, len(a) - args.held_out), slice(len(a) - args.held_out, len(a))
    net = ContextNet(v, A, grid, radius)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    n_fit = fit.stop
    start = time.process_time()
    for _ in range(args.steps):
        i = torch.randint(0, n_fit, (args.batch_size,))
        logits = net(F.one_hot(x[i], v).permute(0, 3, 1, 2).float(), a[i])
        loss = F.cross_entropy(logits, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.process_time() - start
    with torch.no_grad():
        xs, ys, acts = x[held], y[held], a[held]
        pred = torch.cat([net(F.one_hot(xs[s:s + 512], v).permute(0, 3, 1, 2).float(), acts[s:s + 512]).argmax(1)
                          for s in range(0, len(acts), 512)])
    right, changed = pred == ys, xs != ys
    factor = acts % len(names)  # actions are "<factor> +" for every factor, then "<factor> -"
    cells = [f"changed {right[changed].float().mean():.3f}", f"kept {right[~changed].float().mean():.3f}"]
    for f, name in enumerate(names):
        m = changed & (factor == f)[:, None, None]
        cells.append(f"{name} {right[m].float().mean():.3f}")
    print(f"radius {radius}: " + ", ".join(cells) + f"  ({args.steps} steps, {seconds:.0f} s CPU)", flush=True)


def score_release(path: str, pool: dict[str, torch.Tensor], args: argparse.Namespace, names: list[str]) -> None:
    """The same held-out accuracy for a release's own transition layer (deterministic, one step)."""
    from causalvq import CausalVQ

    model = CausalVQ.from_pretrained(path).eval()
    n = len(pool["actions"])
    held = slice(n - args.held_out, n)
    xs, ys, acts = pool["codes_x"][held].long(), pool["codes_y"][held].long(), pool["actions"][held]
    with torch.inference_mode():
        pred = torch.cat([model.transition(model.flatten_codes(xs[s:s + 256]), acts[s:s + 256], sample=False)
                          .probs.argmax(-1) for s in range(0, len(acts), 256)])
    right, changed = pred == model.flatten_codes(ys), model.flatten_codes(xs) != model.flatten_codes(ys)
    factor = acts % len(names)
    cells = [f"changed {right[changed].float().mean():.3f}", f"kept {right[~changed].float().mean():.3f}"]
    cells += [f"{name} {right[changed & (factor == f)[:, None]].float().mean():.3f}" for f, name in enumerate(names)]
    print(f"release {path}: " + ", ".join(cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", required=True, help="a stage-2 run's stage2_codes.safetensors")
    p.add_argument("--codebook-size", type=int, default=128)
    p.add_argument("--radius", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--held-out", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--release", nargs="*", default=[], help="also score these releases' transition layers")
    p.add_argument("--factors", nargs="+",
                   default=["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"])
    args = p.parse_args()
    torch.set_num_threads(1)
    pool = load_file(args.pool)
    for path in args.release:
        score_release(path, pool, args, args.factors)
    for r in args.radius:
        run(r, pool, args, args.factors)


if __name__ == "__main__":
    main()
