"""Retrieval that can say no (``causalvq.metrics.reject``), measured: where the misses come from and how each
reject rule does, every rule on the same pairs.

    python bench/retrieval_reject.py                            # the shipped checkpoint, 128 + 128 images x
    python bench/retrieval_reject.py --checkpoint runs/cpu/model --images 256
    python bench/retrieval_reject.py --select                   # also the quantile study on a second val draw

Draws pairs of the validation split (the calibration) and of the test split (the rates) with ``reject.draw_pairs``
(every single-factor move of 1..K steps from each image x with y in the split, two-factor pairs moving two factors
one step each, unrelated pairs) and scores them once (``reject.score_pairs``: every move's distance and
unexplained codes; the extra step of ``reject.extension_distances`` where a rule needs it). Each rule is
calibrated on the validation pairs at ``--quantile`` and judged on the test pairs:

- ``distance``: the closest move when its distance is within the threshold of its k (the rule this replaces);
- ``smallest k first``: the smallest k whose best move is within its threshold;
- ``distance + unexplained``: also at most the limit of unexplained codes of its k;
- ``distance + two-factor``: also no step of another factor bringing y closer by more than the margin;
- ``shipped``: all three checks (``reject.decide``, what ``python -m train evaluate`` stores in ``retrieval.json``).

Prints the four target rates (one-step right, k = 2..3 right, two-factor rejected, unrelated rejected), the rates
per k, where the true pairs' misses come from (wrong action, wrong k, too far, two factors, no move) and, for the
shipped rule, per factor, and its refusals of the two-factor pairs by the pair of factors moved. ``--select`` draws
a second validation set and prints the shipped rule's rates for several quantiles, calibrated on one validation
draw and judged on the other (how ``reject.QUANTILE`` was chosen: the smallest quantile whose one-step rate reaches
0.95 both ways).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from causalvq import CausalVQ
from causalvq.data import load_dataset
from causalvq.data.pairs import TransitionSampler
from causalvq.metrics import reject
from causalvq.metrics.reject import RejectCalibration, RejectPairs, RejectRates

NO_LIMIT = 1e9  # a check switched off: a limit or margin nothing reaches


def calibration_at(pairs: RejectPairs, scores: reject.PairScores, quantile: float, num_factors: int,
                   names: tuple[str, ...]) -> RejectCalibration:
    """The shipped rule's calibration from scored validation pairs (``reject.fit_rule``, as ``reject.calibrate``;
    the extension rows of ``reject.own_moves_found`` must be filled)."""
    steps = scores.distances.shape[2]
    thresholds, limits, margin = reject.fit_rule(pairs, scores, quantile, num_factors)
    return RejectCalibration(steps=steps, quantile=quantile, thresholds=thresholds, limits=limits, margin=margin,
                             score="", split="val", split_seed=0, fractions=(0.7, 0.15, 0.15), seed=0,
                             rates=reject.empty_rates(steps, names))


def smallest_k_first(scores: reject.PairScores, cal: RejectCalibration) -> list[reject.Decision]:
    """For k = 1..K, the best action at k: the first within its threshold is the answer, else too far."""
    out = []
    for d, sm in zip(scores.distances, scores.same):
        best = d.argmin(0)  # (K,)
        ok = [k for k in range(d.shape[1]) if d[best[k], k] <= cal.thresholds[k]]
        k = ok[0] if ok else int(d.min(0).argmin())
        verdict = reject.Verdict.SAME if sm else reject.Verdict.MOVE if ok else reject.Verdict.FAR
        out.append(reject.Decision(int(best[k]), k + 1, float(d[best[k], k]), verdict))
    return out


def two_factor_groups(pairs: RejectPairs) -> dict[tuple[int, int], list[int]]:
    """The two-factor pairs' rows by the two factors whose values differ between x and y, in factor order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i in np.flatnonzero(pairs.kind == reject.TWO_FACTOR):
        f1, f2 = np.flatnonzero(pairs.x[pairs.source[i]] != pairs.y[i])
        groups.setdefault((int(f1), int(f2)), []).append(int(i))
    return dict(sorted(groups.items()))


def line(name: str, r: RejectRates) -> str:
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    per_k = " ".join(f"k{k}={fmt(v)}" for k, v in enumerate(r.right_per_step, 1))
    misses = ", ".join(f"{k} {v:.3f}" for k, v in r.misses.items())
    return (f"{name:26s} one-step right {fmt(r.one_step_right)} | k=2..3 right {fmt(r.k_steps_right)} | two-factor "
            f"rejected {fmt(r.two_factor_rejected)} | unrelated rejected {fmt(r.unrelated_rejected)}\n"
            f"{'':26s} right per k: {per_k}; misses of true pairs: {misses}")


def score(model: CausalVQ, dataset, sampler: TransitionSampler, images: int, steps: int, seed: int, batch: int
          ) -> tuple[RejectPairs, reject.PairScores]:
    pairs = reject.draw_pairs(sampler, images, steps, np.random.default_rng([seed, 0xBE7C]))
    return pairs, reject.score_pairs(model, dataset, pairs, steps, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/causalvq-shapes3d")
    parser.add_argument("--images", type=int, default=128, help="images x per split")
    parser.add_argument("--steps", type=int, default=reject.STEPS)
    parser.add_argument("--quantile", type=float, default=reject.QUANTILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--select", action="store_true", help="also the quantile study on a second val draw")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from causalvq import kernels

    kernels.enable()
    model = CausalVQ.from_pretrained(args.checkpoint).eval()
    cfg = model.config
    dataset = load_dataset("shapes3d", image_size=cfg.image_size)
    names, F = tuple(dataset.factor_names), cfg.num_factors
    start = time.perf_counter()
    val_pairs, val = score(model, dataset, TransitionSampler(dataset, split="val"), args.images, args.steps,
                           args.seed, args.batch_size)
    val = reject.extend_pairs(model, val, reject.own_moves_found(val_pairs, val), args.batch_size)
    print(f"validation: {len(val_pairs.x)} images x, {val_pairs.kind.tolist().count(reject.SINGLE)} true moves, "
          f"scored in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    test_pairs, test = score(model, dataset, TransitionSampler(dataset, split="test"), args.images, args.steps,
                             args.seed + 1, args.batch_size)
    shipped = calibration_at(val_pairs, val, args.quantile, F, names)
    rules = {"distance": dataclasses.replace(shipped, limits=(NO_LIMIT,) * args.steps, margin=NO_LIMIT),
             "distance + unexplained": dataclasses.replace(shipped, margin=NO_LIMIT),
             "distance + two-factor": dataclasses.replace(shipped, limits=(NO_LIMIT,) * args.steps),
             "shipped": shipped}
    need = np.unique(np.concatenate([reject.within_threshold(test, rules["distance + two-factor"]),
                                     reject.within_threshold(test, shipped)]))
    test = reject.extend_pairs(model, test, need, args.batch_size)
    print(f"test: {len(test_pairs.x)} images x, {len(test_pairs.y)} pairs, scored in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    print(f"\nthresholds {np.round(shipped.thresholds, 3).tolist()}, unexplained-code limits {shipped.limits}, "
          f"margin {shipped.margin:.3f} (quantile {args.quantile} of the validation true moves)\n")
    print(line("distance (q 0.95)", reject.rates_of(
        reject.judge(test, dataclasses.replace(calibration_at(val_pairs, val, 0.95, F, names),
                                               limits=(NO_LIMIT,) * args.steps, margin=NO_LIMIT)),
        test_pairs, names, args.steps)))
    print(line("smallest k first", reject.rates_of(smallest_k_first(test, rules["distance"]), test_pairs, names,
                                                   args.steps)))
    for name, cal in rules.items():  # "shipped" last: its decisions and rates are read below
        decisions = reject.judge(test, cal)
        rates = reject.rates_of(decisions, test_pairs, names, args.steps)
        print(line(name, rates))
    print("\nshipped rule per factor (one-step right / k=2..3 right):")
    for n in names:
        print(f"  {n:12s} {rates.per_factor_one_step_right[n]} / {rates.per_factor_k_steps_right[n]} "
              f"({rates.per_factor_one_step_pairs[n]} / {rates.per_factor_k_steps_pairs[n]} pairs)")
    print("\nshipped rule on the two-factor pairs, by the factors moved (refused / pairs; what the accepted ones were "
          "answered with):")
    for (f1, f2), rows in two_factor_groups(test_pairs).items():
        accepted = [decisions[i] for i in rows if decisions[i].verdict == reject.Verdict.MOVE]
        answers = ", ".join(f"{model.action_names[d.action]} k={d.steps}" for d in accepted[:4])
        moved = f"{names[f1]} + {names[f2]}"
        print(f"  {moved:26s} {len(rows) - len(accepted):3d} / {len(rows):3d}"
              + (f"  ({answers}{', …' if len(accepted) > 4 else ''})" if accepted else ""))
    if args.select:
        other_pairs, other = score(model, dataset, TransitionSampler(dataset, split="val"), args.images, args.steps,
                                   args.seed + 2, args.batch_size)
        other = reject.extend_pairs(model, other, reject.own_moves_found(other_pairs, other), args.batch_size)
        print("\nquantile study (validation only): calibrated on one val draw, judged on the other")
        for q in (0.95, 0.96, 0.97, 0.975, 0.98, 0.99):
            row = []
            for (pa, sa), (pb, sb) in (((val_pairs, val), (other_pairs, other)), ((other_pairs, other),
                                                                                   (val_pairs, val))):
                cal = calibration_at(pa, sa, q, F, names)
                sb = reject.extend_pairs(model, sb, reject.within_threshold(sb, cal), args.batch_size)
                r = reject.rates_of(reject.judge(sb, cal), pb, names, args.steps)
                row.append(f"one-step {r.one_step_right:.3f}, k=2..3 {r.k_steps_right:.3f}, two-factor "
                           f"{r.two_factor_rejected:.3f}, unrelated {r.unrelated_rejected:.3f}")
            print(f"  q {q}: " + "  |  ".join(row))


if __name__ == "__main__":
    main()
