"""Can the intervention mask say which nodes a step changes? The official linear mask network against one with a
hidden layer (fidelity table, B22), and one whose hidden layer also reads the codes of the 3×3 cells around the
node (B24).

    python bench/ablation_mask_form.py [--checkpoint assets/causalvq-shapes3d] [--steps 3000] [--pairs 8000]

Encodes one-step shapes3d pairs of the train split with the checkpoint's (frozen) image model, then fits only the
mask network of a fresh transition layer, p_i = σ(f(a, PE_i))[c_i], to the changed nodes (c^x_i ≠ c^y_i) with the
mask loss of B21 (``causalvq.losses.mask_supervision``): once with the official single linear layer
(``mask_hidden = 0``), once with a hidden layer of 64, once with that layer and the 3×3 code context. Prints, on
2,000 test pairs with the deterministic mask (p > 0.5): precision and recall against the changed nodes, mask size
over changed nodes, and precision per factor.
Without B24 the mask sees the action, the node's position and its own code only; what it cannot express here it
cannot learn inside the whole model either.
"""

from __future__ import annotations

import argparse
import time

import torch
from ablation_positional import encode_pairs

from causalvq import losses
from causalvq.metrics.structure import mask_scores
from causalvq.model import CausalVQ
from causalvq.transition import CausalTransition


def fit(config, train: tuple, test: tuple, steps: int) -> dict[str, object]:  # noqa: ANN001
    torch.manual_seed(0)
    layer = CausalTransition(config).train()
    params = [p for m in (layer.mask_net, layer.mask_out, layer.mask_context) if m is not None for p in m.parameters()]
    opt = torch.optim.Adam(params, 3e-3)
    gen = torch.Generator().manual_seed(0)
    cx, cy, act = train
    one_hot = lambda c: torch.nn.functional.one_hot(c, config.codebook_size).float()  # noqa: E731
    start = time.perf_counter()
    for _ in range(steps):
        i = torch.randint(0, len(cx), (128,), generator=gen)
        loss = losses.mask_supervision(layer.intervention_probs(one_hot(cx[i]), act[i]), cx[i], cy[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer.eval()
    tx, ty, ta = test
    with torch.no_grad():
        mask = layer.intervention_probs(one_hot(tx), ta) > 0.5
    changed, factor = tx != ty, ta % config.num_factors
    per_factor = {name: mask_scores(mask[factor == f], changed[factor == f]).precision
                  for f, name in enumerate(config.factor_names)}
    return {"scores": mask_scores(mask, changed), "per_factor": per_factor, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--pairs", type=int, default=8000)
    args = parser.parse_args()
    model = CausalVQ.from_pretrained(args.checkpoint)
    train, test = encode_pairs(model, "train", args.pairs, 1), encode_pairs(model, "test", 2000, 2)
    print(f"{args.checkpoint}: {args.pairs} train pairs, 2000 test pairs, {args.steps} steps of 128; "
          f"changed nodes per test pair {(test[0] != test[1]).sum(1).double().mean():.1f} of {test[0].shape[1]}")
    for hidden, context in ((0, 0), (64, 0), (64, 1)):
        r = fit(model.config.replace(mask_hidden=hidden, mask_context=context), train, test, args.steps)
        s = r["scores"]
        form = ("linear (official)" if hidden == 0 else f"hidden layer of {hidden}"
                + (", 3×3 code context" if context else ""))
        worst = min(v for v in r["per_factor"].values() if v is not None)
        print(f"{form:>34}: precision {s.precision:.3f}  recall {s.recall:.3f}  size/changed {s.size_ratio:.2f}  "
              f"empty {s.empty_share:.3f}  worst factor precision {worst:.3f}  ({r['seconds']:.0f} s)")
        print(" " * 36 + "per factor: " + ", ".join(f"{k} {v:.2f}" for k, v in r["per_factor"].items()))


if __name__ == "__main__":
    main()
