"""What the rule that turns a transition's output into codes and images can buy, with the model left as it is.

    python bench/decoding_rules.py                                   # the shipped checkpoint
    python bench/decoding_rules.py --checkpoint runs/e3/model --lookup-pairs 30000

The deterministic transition thresholds the mask at p > 0.5, blends the heads "unchanged" and "intervened by a"
with that hard mask, takes each node's argmax code and decodes the codes. On one-step test pairs this prints the
code accuracy on the nodes the step changes and on the ones it keeps, per factor, for other rules read from the
same pass:
- the hard mask at other thresholds;
- the mixture over the mask, (1 − p)·softmax(H⁰) + p·softmax(Hᵃ): the predictive distribution with the Bernoulli
  mask marginalised out, whose argmax is the Bayes choice of each node's code;
- the head "intervened by a" on every node (what the changed nodes can get at most from this head);
- a lookup outside the model: each (action, node, x's code) answered with the code y had most often in
  ``--lookup-pairs`` training-split pairs (x's code when unseen), what a node's own code and position say.
Then intervention accuracy at 1 and 3 steps (``evaluate_intervention`` on the draws of ``python -m train
evaluate`` with seed 0 and 512 pairs: the decoded image against x's k-step neighbours) with the argmax codes
decoded, and with the expected codebook vector Σ_v ŷ_v·e_v of the last step decoded instead.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np
import torch

from causalvq.data import render_images
from causalvq.data.base import FactorDataset
from causalvq.data.pairs import TransitionSampler
from causalvq.explore.checkpoints import find_dataset
from causalvq.metrics.evaluation import _STREAMS, evaluate_intervention, sample_step_pairs
from causalvq.model import CausalVQ, Intervention


def encode(model: CausalVQ, dataset: FactorDataset, factors: np.ndarray, batch: int = 128) -> torch.Tensor:
    """Flat node codes `(b, n)` of the images of ``factors``."""
    return torch.cat([model.flatten_codes(model.encode_codes(render_images(dataset, factors[i:i + batch],
                                                                           model.config.image_size)))
                      for i in range(0, len(factors), batch)])


def lookup_codes(model: CausalVQ, dataset: FactorDataset, pairs: int, seed: int) -> Callable:
    """A predictor of y's codes from (action, node, x's code) alone, fitted on ``pairs`` training-split pairs."""
    xf, yf, actions = TransitionSampler(dataset, split="train").sample_pairs(pairs, np.random.default_rng(seed))
    nx, ny = encode(model, dataset, xf).numpy(), encode(model, dataset, yf).numpy()
    table: dict[tuple[int, int, int], Counter] = defaultdict(Counter)
    for cx, cy, a in zip(nx, ny, actions):
        for i, (u, v) in enumerate(zip(cx, cy)):
            table[a, i, u][v] += 1
    best = {key: counts.most_common(1)[0][0] for key, counts in table.items()}

    def predict(nodes: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[best.get((int(a), i, int(u)), int(u)) for i, u in enumerate(row)]
                             for row, a in zip(nodes, action)])
    return predict


def soft_intervene(model: CausalVQ) -> Callable:
    """``model.intervene`` decoding the expected codebook vector of the last step instead of its argmax codes."""
    def intervene(x: torch.Tensor, action: torch.Tensor, steps: int = 1, sample: bool = False) -> Intervention:
        codes = before = model.encode_codes(x)
        action = model._check_actions(action, x.shape[0])
        for _ in range(steps):
            t = model.transition_codes(codes, action)
            codes = t.codes
        b, k, h, w = codes.shape
        z = (t.probs @ model.quantizer.codebooks[0]).view(b, h, w, -1)
        return Intervention(image=model.decoder(z.permute(0, 3, 1, 2)), codes_before=before, codes_after=codes,
                            mask=t.mask, steps=steps)
    return intervene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--pairs", type=int, default=512, help="one-step test pairs (evaluate's draw, seed 0)")
    parser.add_argument("--lookup-pairs", type=int, default=30000, help="training pairs the lookup is fitted on")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    if model.config.num_codebooks != 1:
        raise SystemExit("this bench reads a checkpoint with one codebook")
    dataset = find_dataset(model.config)
    if dataset is None:
        raise SystemExit(f"{args.checkpoint}: no procedural dataset matches this checkpoint's factors")
    names, sampler = dataset.factor_names, TransitionSampler(dataset, split="test")
    xf, yf, actions = sampler.sample_pairs(args.pairs, np.random.default_rng([0, _STREAMS["retrieval"]]))
    act = torch.as_tensor(actions)
    with torch.inference_mode():
        nx, ny = encode(model, dataset, xf), encode(model, dataset, yf)
        out = [model.transition(nx[i:i + 64], act[i:i + 64], sample=False) for i in range(0, len(act), 64)]
        H, p = torch.cat([o.head_logits for o in out]), torch.cat([o.mask_probs for o in out])  # (b, n, 2, v), (b, n)
        lookup = lookup_codes(model, dataset, args.lookup_pairs, seed=5)(nx, act)

    changed, factor = nx != ny, act % len(names)
    blend = lambda m: (H[:, :, 0] + m[..., None] * (H[:, :, 1] - H[:, :, 0])).argmax(-1)  # noqa: E731
    mixture = (1 - p[..., None]) * H[:, :, 0].softmax(-1) + p[..., None] * H[:, :, 1].softmax(-1)
    rules = {**{f"hard mask, p > {t}" + (" (the model's)" if t == 0.5 else ""): blend((p > t).float())
                for t in (0.3, 0.5, 0.7)},
             "mixture over the mask": mixture.argmax(-1),
             "head 'intervened by a' everywhere": H[:, :, 1].argmax(-1),
             f"lookup (a, node, c_x), {args.lookup_pairs:,} pairs": lookup}
    print(f"{args.checkpoint}: {len(act)} one-step test pairs; codes of y right on the nodes the step changes "
          f"(overall, then per factor) and on the kept nodes")
    print(f"| rule | changed | {' | '.join(names)} | kept |\n|---|---|{'---|' * len(names)}---|")
    for rule, pred in rules.items():
        hit = pred == ny
        per = [f"{hit[changed & (factor == f)[:, None]].float().mean():.3f}" for f in range(len(names))]
        print(f"| {rule} | {hit[changed].float().mean():.3f} | {' | '.join(per)} | "
              f"{hit[~changed].float().mean():.3f} |")

    print("\nintervention accuracy (evaluate's draws, 1 and 3 steps), argmax codes against the expected code vector")
    argmax_intervene, rng = model.intervene, np.random.default_rng([0, _STREAMS["intervention"]])
    draws = {k: sample_step_pairs(sampler, args.pairs, k, rng) for k in (1, 2, 3)}  # evaluate's order of draws
    for k in (1, 3):
        xk, ak = draws[k]
        for rule, fn in (("argmax codes", argmax_intervene), ("expected code vector", soft_intervene(model))):
            model.intervene = fn
            with torch.inference_mode():
                r = evaluate_intervention(model, dataset, xk, ak, k)
            per = ", ".join(f"{n} {v:.3f}" for n, v in r.per_factor_accuracy.items() if v is not None)
            print(f"  k = {k}, {rule:>20}: {r.accuracy:.3f} ({per})")
    model.intervene = argmax_intervene


if __name__ == "__main__":
    main()
