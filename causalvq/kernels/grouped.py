"""Per-sample choice among several linear maps, without a per-sample copy of the weights.

The action heads of the transition layer pick, for each sample, one of A + 1 maps (a discoverer, a GATv2 head):
``x[s] @ weight[index[s]].T + bias[index[s]]``. Gathering a `(b, out, in)` copy of the weights per sample is the
plain statement and the memory and most of the time at the paper's sizes; ``grouped_linear`` computes the same
numbers with one matmul per map used.

Axes: ``b`` batch, ``n`` rows per sample, ``H`` maps, ``in`` / ``out`` widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grouped_linear(x: torch.Tensor, maps: list[tuple[torch.Tensor, torch.Tensor | None]],
                   index: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample choice among H linear maps, for several map families over the same input: for each
    ``(weight, bias)`` of ``maps``, ``x[s] @ weight[index[s]].T + bias[index[s]]``.

    One matmul per distinct index over the samples that use it, instead of gathering a `(b, out, in)` copy of
    the weights per sample (the memory and most of the time of the action heads at the paper's sizes). The
    samples are grouped once for all the families (source and target projections, or a discoverer's halves).

    Args:
        x: `(b, n, in)`; each weight: `(H, out, in)`; each bias: `(H, out)` or None; index: long `(b,)` in [0, H).
    Returns:
        one `(b, n, out)` tensor per map family.
    """
    if x.shape[0] == 0:
        return [x.new_zeros(0, x.shape[1], weight.shape[1]) for weight, _ in maps]
    lo, hi = int(index.min()), int(index.max())
    if lo == hi:  # one map for the whole batch
        return [F.linear(x, weight[lo], None if bias is None else bias[lo]) for weight, bias in maps]
    # Samples sorted by map: as they come when they already are (retrieval's copies), else one gather. Gathers
    # are index_select (backward: an index_add; indexing would scatter with a sort) and the maps are unbound
    # views (backward: one stack; weight[h] would zero-fill a full copy of the weights per map used).
    order = None if bool((index[1:] >= index[:-1]).all()) else torch.argsort(index, stable=True)
    heads, counts = torch.unique_consecutive(index if order is None else index[order], return_counts=True)
    grouped = x if order is None else x.index_select(0, order)
    unsort = None if order is None else torch.argsort(order)
    outputs = []
    if len(heads) == hi - lo + 1 and int(counts.min()) == int(counts.max()):
        # Every map of a range used by as many samples (retrieval: each action once per pair): one batched
        # matmul over the range, a view of the weights.
        rows = grouped.reshape(len(heads), -1, x.shape[-1])  # (maps used, samples per map · n, in)
        for weight, bias in maps:
            W = weight[lo:hi + 1].transpose(1, 2)  # (maps used, in, out)
            out = torch.bmm(rows, W) if bias is None else torch.baddbmm(bias[lo:hi + 1, None], rows, W)
            out = out.view(x.shape[0], x.shape[1], -1)
            outputs.append(out if unsort is None else out.index_select(0, unsort))
        return outputs
    rows = grouped.split(counts.tolist())
    for weight, bias in maps:
        weights = weight.unbind(0)
        biases = [None] * len(weights) if bias is None else bias.unbind(0)
        out = torch.cat([F.linear(r, weights[h], biases[h]) for h, r in zip(heads.tolist(), rows)])
        outputs.append(out if unsort is None else out.index_select(0, unsort))
    return outputs
