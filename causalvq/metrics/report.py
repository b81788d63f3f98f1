"""The evaluation report: what ``causalvq.metrics.evaluation.evaluate_model`` measured, as frozen dataclasses
(``EvalReport`` and one result per section), and its writers (``eval.json``, ``eval.md``, ``confusion.png``).

``EvalReport.rows`` lists every scalar metric with its chance level and sample count; ``write_report`` writes the
three files; ``EvalReport.from_dict`` reads a written ``eval.json`` back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from causalvq.metrics.disentanglement import DisentanglementSizes
from causalvq.metrics.reject import K_STEPS, RejectResult, to_jsonable
from causalvq.metrics.structure import StructureResult
from causalvq.metrics.targets import Target, target_table


# --- results -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReconstructionResult:
    mse: float  # mean squared error on [0, 1], over pixels and images
    psnr: float  # dB, 10·log10(1 / mse); inf for a perfect reconstruction
    num_images: int


@dataclass(frozen=True)
class RetrievalResult:
    action_accuracy: float  # directed: argmax over the A actions
    factor_accuracy: float  # undirected: argmax over the F factors of p_f + p_{F+f}
    action_chance: float  # 1 / A
    factor_chance: float  # 1 / F
    per_factor_action_accuracy: dict[str, float | None]  # factor name -> directed accuracy (None: no pairs)
    per_factor_factor_accuracy: dict[str, float | None]  # factor name -> undirected accuracy
    per_factor_pairs: dict[str, int]  # factor name -> pairs moving it
    confusion: tuple[tuple[int, ...], ...]  # (a, a) counts, row = true action, column = predicted
    num_pairs: int
    argmax_factor_accuracy: float | None = None  # the official causal_nodir_acc: argmax action's factor (None: older)


@dataclass(frozen=True)
class InterventionResult:
    steps: int  # k, applications of the action
    accuracy: float | None  # share of pairs decoded nearest to the true y_k (None: no pairs)
    chance: float | None  # hit rate of a uniformly drawn candidate
    mse: float | None  # mean pixel MSE between the decoded image and y_k
    per_factor_accuracy: dict[str, float | None]  # factor name -> accuracy over the pairs moving it
    per_factor_pairs: dict[str, int]
    num_pairs: int


@dataclass(frozen=True)
class CodeResult:
    """The transition at the code level, on one-step pairs: which of y's codes it predicts.

    A node is *changed* when the action changes its code (the codes of x and y differ there). The masks and graphs
    of the same pairs are in ``StructureResult``.
    """

    changed_accuracy: float | None  # share of changed nodes given y's code exactly (None: no node changed)
    unchanged_accuracy: float | None  # share of the other nodes given y's (= x's) code
    per_factor_changed_accuracy: dict[str, float | None]  # over the pairs moving each factor
    per_factor_changed_nodes: dict[str, float | None]  # mean changed nodes per pair
    num_pairs: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodeResult:
        """Rebuild from ``dataclasses.asdict``'s output; a report written before the structure section also holds
        mask and graph sizes here, which that section now reports (they are left out)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class DisentanglementResult:
    representation: str  # a key of REPRESENTATIONS
    description: str
    dims: int  # size of the flattened representation
    scores: dict[str, float]  # evaluate_representation's output (dci.*, mig, sap, factor_vae.*)
    baseline: dict[str, float] | None = None  # the same at chance: unrelated_baseline or noise_baseline


@dataclass(frozen=True)
class ProbeResult:
    """The factor probe of the checkpoint folder (``causalvq.probe``) on images of the split."""

    accuracy: float  # mean over the factors of the per-factor accuracy
    chance: float  # mean over the factors of 1 / size_f
    per_factor_accuracy: dict[str, float]  # factor name -> share of images whose estimate is the true value
    per_factor_chance: dict[str, float]  # factor name -> 1 / size_f
    num_images: int


@dataclass(frozen=True)
class MetricRow:
    name: str  # dotted metric name, e.g. "retrieval.factor_accuracy.scale"
    value: float | None  # None: no samples
    chance: float | None  # chance level where one applies
    samples: int  # points or pairs behind the value


@dataclass(frozen=True)
class EvalReport:
    """Everything ``evaluate_model`` measured, with the protocol needed to read it."""

    dataset: str
    split: str
    seed: int
    image_size: int  # model resolution S the images were resized to
    factor_names: tuple[str, ...]
    action_names: tuple[str, ...]
    reconstruction: ReconstructionResult
    retrieval: RetrievalResult
    codes: CodeResult | None  # on the retrieval pairs (None in reports written before it existed)
    structure: StructureResult | None  # masks, graphs and do() on the retrieval pairs (None: written before it)
    intervention: tuple[InterventionResult, ...]  # k = 1 .. max_steps
    disentanglement: tuple[DisentanglementResult, ...]  # empty when switched off
    protocol: dict[str, Any]  # split seed, sample sizes and switches
    seconds: dict[str, float]  # wall time per section
    probe: ProbeResult | None = None  # the checkpoint folder's factor probe (None: it has none, or not evaluated)
    reject: RejectResult | None = None  # retrieval with a reject option (None: not measured, or written before it)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); ``EvalReport.from_dict`` inverts it."""
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Rebuild a report from ``to_dict``'s output (e.g. a loaded ``eval.json``)."""
        retrieval = dict(data["retrieval"])
        retrieval["confusion"] = tuple(tuple(int(v) for v in row) for row in retrieval["confusion"])
        return cls(
            dataset=data["dataset"], split=data["split"], seed=int(data["seed"]), image_size=int(data["image_size"]),
            factor_names=tuple(data["factor_names"]), action_names=tuple(data["action_names"]),
            reconstruction=ReconstructionResult(**data["reconstruction"]),
            retrieval=RetrievalResult(**retrieval),
            codes=CodeResult.from_dict(data["codes"]) if data.get("codes") else None,
            structure=StructureResult.from_dict(data["structure"]) if data.get("structure") else None,
            intervention=tuple(InterventionResult(**i) for i in data["intervention"]),
            disentanglement=tuple(DisentanglementResult(**d) for d in data["disentanglement"]),
            protocol=dict(data["protocol"]), seconds=dict(data["seconds"]),
            probe=ProbeResult(**data["probe"]) if data.get("probe") else None,
            reject=RejectResult.from_dict(data["reject"]) if data.get("reject") else None,
        )  # fmt: skip

    def rows(self) -> list[MetricRow]:
        """Every scalar metric, with its chance level and sample count (the rows of ``eval.md``)."""
        rec, ret = self.reconstruction, self.retrieval
        out = [MetricRow("reconstruction.mse", rec.mse, None, rec.num_images),
               MetricRow("reconstruction.psnr_db", rec.psnr, None, rec.num_images),
               MetricRow("retrieval.action_accuracy", ret.action_accuracy, ret.action_chance, ret.num_pairs),
               MetricRow("retrieval.factor_accuracy", ret.factor_accuracy, ret.factor_chance, ret.num_pairs)]
        if ret.argmax_factor_accuracy is not None:
            out.append(MetricRow("retrieval.argmax_factor_accuracy", ret.argmax_factor_accuracy, ret.factor_chance,
                                 ret.num_pairs))
        for name in self.factor_names:
            n = ret.per_factor_pairs[name]
            out += [MetricRow(f"retrieval.action_accuracy.{name}", ret.per_factor_action_accuracy[name],
                              ret.action_chance, n),
                    MetricRow(f"retrieval.factor_accuracy.{name}", ret.per_factor_factor_accuracy[name],
                              ret.factor_chance, n)]
        if (rj := self.reject) is not None:
            out += _reject_rows(rj, self.factor_names)
        if (codes := self.codes) is not None:
            n = codes.num_pairs
            out += [MetricRow("codes.changed_accuracy", codes.changed_accuracy, None, n),
                    MetricRow("codes.unchanged_accuracy", codes.unchanged_accuracy, None, n)]
            out += [MetricRow(f"codes.changed_accuracy.{name}", codes.per_factor_changed_accuracy[name], None,
                              ret.per_factor_pairs[name]) for name in self.factor_names]
            out += [MetricRow(f"codes.changed_nodes.{name}", codes.per_factor_changed_nodes[name], None,
                              ret.per_factor_pairs[name]) for name in self.factor_names]
        if (st := self.structure) is not None:
            out += _structure_rows(st, self.factor_names, ret.per_factor_pairs)
        for res in self.intervention:
            key = f"intervention.k{res.steps}"
            out += [MetricRow(f"{key}.accuracy", res.accuracy, res.chance, res.num_pairs),
                    MetricRow(f"{key}.mse", res.mse, None, res.num_pairs)]
            out += [MetricRow(f"{key}.accuracy.{name}", res.per_factor_accuracy[name], None,
                              res.per_factor_pairs[name]) for name in self.factor_names]
        if (probe := self.probe) is not None:
            out.append(MetricRow("probe.accuracy.mean", probe.accuracy, probe.chance, probe.num_images))
            out += [MetricRow(f"probe.accuracy.{name}", probe.per_factor_accuracy[name], probe.per_factor_chance[name],
                              probe.num_images) for name in self.factor_names]
        sizes = self.protocol.get("disentanglement") or {}
        points = sizes.get("num_train", 0) + sizes.get("num_test", 0)
        samples = {"dci": sizes.get("dci_num_train", sizes.get("num_train", 0))
                          + sizes.get("dci_num_test", sizes.get("num_test", 0)),
                   "mig": sizes.get("num_train", 0), "sap": points,
                   "factor_vae": sizes.get("factor_vae_train", 0) + sizes.get("factor_vae_eval", 0) or points}
        for dis in self.disentanglement:
            base = dis.baseline or {}
            out += [MetricRow(f"disentanglement.{dis.representation}.{k}", v, base.get(k),
                              samples[k.split(".")[0]]) for k, v in dis.scores.items()]
        return out  # fmt: skip

    def metrics(self) -> dict[str, float | None]:
        """Every scalar metric by dotted name."""
        return {row.name: row.value for row in self.rows()}




# --- writing --------------------------------------------------------------------------------------------------------
def format_value(value: float | None) -> str:
    """A metric for a Markdown table: 4 decimals, scientific below 1e-3, 'n/a' for None."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"


def metric_table(rows: Sequence[MetricRow]) -> list[str]:
    """Markdown table lines: metric, value, chance level (blank where none applies), sample count."""
    chance = lambda r: "" if r.chance is None else format_value(r.chance)  # noqa: E731
    return ["| metric | value | chance | samples |", "|---|---|---|---|",
            *(f"| {r.name} | {format_value(r.value)} | {chance(r)} | {r.samples} |" for r in rows)]


def summary_lines(report: EvalReport, targets: Sequence[Target] = (), notes: Sequence[str] = ()) -> list[str]:
    """What a reader wants first: the targets checked against the report (``causalvq.metrics.targets``), the
    caller's ``notes`` (e.g. the training time), then the structure in plain words; blank-line separated."""
    lines: list[str] = []
    if targets:
        lines += ["**Targets** (the recipe's `[eval.targets]`):", "", *target_table(targets, report.metrics()), ""]
    for note in notes:
        lines += [note, ""]
    return lines + structure_paragraph(report)


def format_markdown(report: EvalReport, targets: Sequence[Target] = (), notes: Sequence[str] = ()) -> str:
    """The report as Markdown: the targets and notes (``summary_lines``), a table with one row per metric
    (``EvalReport.rows``: value, chance level where one applies, sample count), then the protocol notes."""
    p = report.protocol
    lines = [f"# Evaluation: {report.dataset}, split `{report.split}`", "", *summary_lines(report, targets, notes)]
    lines += metric_table(report.rows())
    lines += ["", "## Protocol", "",
              f"- split `{report.split}` of the factor grid (split seed {p['split_seed']}, fractions "
              f"{p['split_fractions']}); draw seed {report.seed}; images rendered from their factors and resized to "
              f"{report.image_size} px.",
              "- deterministic evaluation: eval mode, no gradients, `sample=False` (thresholds, no Gumbel noise).",
              f"- reconstruction: {p['num_images']} images; MSE on [0, 1]; PSNR = 10·log10(1 / mean MSE).",
              f"- action retrieval: {p['num_pairs']} one-step transition pairs, both images in the split; action "
              "accuracy = argmax over the A actions (chance 1/A); factor accuracy folds p_f + p_{F+f} and takes "
              "the argmax over the F factors (chance 1/F); argmax factor accuracy = the factor of the argmax action is "
              "the true factor (the official `causal_nodir_acc`, never below action accuracy). Action accuracy and "
              "argmax factor accuracy are the paper's retrieval metrics in the official notebook's definition "
              "(apply_action.ipynb: `causal_acc`, `causal_nodir_acc`), as a clean mean over the pairs.",
              "- codes (causalvq addition), on the same one-step pairs: `changed_accuracy` = share of the nodes "
              "whose code the action changes (x's and y's codes differ) for which the deterministic transition "
              "predicts y's code; `unchanged_accuracy` the same on the other nodes; `changed_nodes` = changed nodes "
              "per pair.",
              "- structure (causalvq addition), on the same one-step pairs, deterministic "
              "(`causalvq.metrics.structure`): a node is *changed* when x's and y's codes differ there. "
              "`mask.precision` = share of the intervened nodes (mask p > 0.5) that change; `mask.recall` = share "
              "of the changed nodes intervened on (both pooled over pairs); `mask.size_ratio` = mean mask size / "
              "mean changed nodes; `mask.empty_share` = share of pairs with an empty mask; `in_degree` = in-edges "
              "per node of the deterministic graph (edge probability > 0.5, self-loops excluded) under the pair's "
              "action (`.intervened_nodes` / `.kept_nodes`: per node inside / outside the pair's mask) and with no "
              "action; `do`: for each pair that changes a node, one changed node (uniform, "
              "seeded) is set to its code in y, do(i = c^y_i), and the no-action pass predicts the rest, compared "
              "with the same pass on x unedited: `propagating_share` = share of these interventions that change "
              "another node, `changed_nodes` = "
              "other nodes changed per intervention, `agreement` = share of those changes that take y's code.",
              f"- intervention accuracy (causalvq addition): for k = 1..{p['max_steps']}, pairs (x, a) of the split "
              "with a applicable k times; correct when the decoded `intervene(x, a, steps=k)` is strictly nearest "
              "(pixel MSE) to the true y_k among x and every k-step neighbour of x; chance = hit rate of a "
              f"uniformly drawn candidate; `mse` = MSE to y_k. Pairs per k: {p['intervention_pairs']}."]
    if (rj := report.reject) is not None:
        c, r = rj.calibration, rj.rates
        lines.append(
            f"- retrieval with a reject option (causalvq addition; `causalvq.metrics.reject`): every single-factor "
            f"move of k = 1..{c.steps} steps is scored by y's {c.score} node NLL under the k-th transition after k − 1 "
            "argmax steps; the closest is the answer unless x and y have the same codes (no move), its distance is "
            "above the threshold of its k, or one more step of another factor's action brings y closer by more than "
            f"the margin. Thresholds and margin: the {c.quantile:.3g} quantile of true moves on the `{c.split}` split "
            f"({c.rates.num_images} images x: every single-factor move of 1..{c.steps} steps with y in the split; "
            f"thresholds {', '.join(f'{t:.3f}' for t in c.thresholds)}, margin {c.margin:.3f}). Rates on "
            f"{r.num_images} images x of split `{report.split}` (fresh draws): `one_step_right` / `right.k<k>` = "
            f"true k-step moves answered with their own (action, k), `k_steps_right` over k = "
            f"{', '.join(map(str, K_STEPS))}; `two_factor_rejected` = pairs moving two factors one step each that "
            f"are refused; `unrelated_rejected` = refused pairs with y drawn independently ({r.num_pairs['single']} "
            f"true, {r.num_pairs['two_factor']} two-factor, {r.num_pairs['unrelated']} unrelated pairs).")
    elif "reject" in p:
        lines.append(f"- retrieval with a reject option: {p['reject']}.")
    if report.probe is not None:
        lines.append(f"- factor probe (causalvq addition; `causalvq.probe`, the checkpoint's `probe.safetensors` + "
                     f"`probe.json`): a softmax classifier per factor over the one-hot codes, fitted on images of the "
                     f"train split; `probe.accuracy.<factor>` = share of {report.probe.num_images} images of the split "
                     "whose estimated value is the true one (chance 1 / number of values), `probe.accuracy.mean` their "
                     "mean.")
    else:
        lines.append("- factor probe: none evaluated (the checkpoint folder has no `probe.safetensors` / "
                     "`probe.json`; `python -m train probe --checkpoint DIR` fits one).")
    if report.disentanglement:
        lines.append(disentanglement_protocol(p["disentanglement"], p.get("disentanglement_baseline") or "noise"))
        lines += [f"  - `{r.representation}`: {r.description}; {r.dims} dims." for r in report.disentanglement]
    else:
        lines.append("- disentanglement: not run.")
    lines.append("- wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()) + ".")
    return "\n".join(lines) + "\n"  # fmt: skip


def disentanglement_protocol(sizes: dict[str, Any], baseline: str = "noise") -> str:
    """The protocol line of the disentanglement rows, from ``dataclasses.asdict(DisentanglementSizes)`` (or the
    shorter dict of a report written before DCI sizes, stages and noise baselines were recorded) and the kind of
    baseline in the chance column (reports written before the choice existed used ``"noise"``)."""
    d = sizes
    if "dci_stages" not in d:
        return (f"- disentanglement: DCI, MIG, SAP on {d['num_train']} + {d['num_test']} points of the split (DCI "
                f"classifier `{d['importance']}`, 20 stages); FactorVAE with {d['num_train']} + {d['num_test']} votes "
                f"of {d['group_size']} points, {d['num_variance']} points for the variances. Representations:")
    name = DisentanglementSizes(**d).name
    label = {"library": "disentanglement_lib's sizes but DCI's", "custom": "custom sizes"}.get(name, "a faster setting")
    return (f"- disentanglement, sizes `{name}` ({label}; the libraries: MIG, SAP and DCI on 10,000 + 5,000 points, "
            f"DCI with 100 stages, FactorVAE with 10,000 + 5,000 votes of 64 points, 10,000 for the variances): MIG on "
            f"{d['num_train']} points of the split, SAP on {d['num_train']} + {d['num_test']}, DCI on "
            f"{d['dci_num_train']} + {d['dci_num_test']} of them (classifier `{d['importance']}`, "
            f"{d['dci_stages']} boosting stages per factor); FactorVAE with {d['factor_vae_train']} + "
            f"{d['factor_vae_eval']} votes of {d['group_size']} points, {d['num_variance']} points for the "
            "variances, ties broken at random with the seed (`tied_votes`: share of the votes that tied). The chance "
            f"column holds each score's baseline: {BASELINE_WORDS[baseline]}, at the same sizes. Representations:")


BASELINE_WORDS = {
    "noise": "the same metric on independent standard normal codes as wide as the representation",
    "unrelated": ("the same metric on the same representation of images unrelated to the factors asked (each "
                  "point's factors drawn afresh): its own values, no information about the factors"),
}


def plot_confusion(confusion: Any, action_names: tuple[str, ...], path: str | os.PathLike,
                   title: str = "action retrieval: confusion") -> Path:
    """Write confusion counts `(a, a)` (row = true action, column = predicted) as a PNG heat map: colour = share
    of the row, counts printed in the cells, axes labelled with the action names. Returns the path.

    Uses matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.int64)
    a = len(action_names)
    if counts.shape != (a, a):
        raise ValueError(f"confusion must be ({a}, {a}) for {a} action names, got {counts.shape}")
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # (a, a)
    side = 2.0 + 0.45 * a
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(a), action_names, rotation=90, fontsize=8)
    ax.set_yticks(range(a), action_names, fontsize=8)
    ax.set_xlabel("predicted action")
    ax.set_ylabel("true action")
    ax.set_title(title, fontsize=10)
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def write_report(report: EvalReport, out_dir: str | os.PathLike, targets: Sequence[Target] = (),
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``eval.json``, ``eval.md`` (with ``targets`` and ``notes``: ``format_markdown``) and ``confusion.png``
    into ``out_dir``; returns their paths by kind (``"json"``, ``"markdown"``, ``"confusion"``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "markdown": out / "eval.md", "confusion": out / "confusion.png"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    paths["markdown"].write_text(format_markdown(report, targets, notes))
    plot_confusion(report.retrieval.confusion, report.action_names, paths["confusion"])
    return paths


def _reject_rows(rj: RejectResult, names: tuple[str, ...]) -> list[MetricRow]:
    """The rows of ``EvalReport.rows`` for retrieval with a reject option: the four rates, per k, per factor."""
    r = rj.rates
    k_pairs = sum(c for k, c in enumerate(r.pairs_per_step, 1) if k in K_STEPS)
    out = [MetricRow("retrieval.reject.one_step_right", r.one_step_right, None, r.pairs_per_step[0]),
           MetricRow("retrieval.reject.k_steps_right", r.k_steps_right, None, k_pairs),
           MetricRow("retrieval.reject.two_factor_rejected", r.two_factor_rejected, None, r.num_pairs["two_factor"]),
           MetricRow("retrieval.reject.unrelated_rejected", r.unrelated_rejected, None, r.num_pairs["unrelated"])]
    out += [MetricRow(f"retrieval.reject.right.k{k}", v, None, c)
            for k, (v, c) in enumerate(zip(r.right_per_step, r.pairs_per_step), 1)]
    out += [MetricRow(f"retrieval.reject.one_step_right.{n}", r.per_factor_one_step_right[n], None,
                      r.per_factor_one_step_pairs[n]) for n in names]
    out += [MetricRow(f"retrieval.reject.k_steps_right.{n}", r.per_factor_k_steps_right[n], None,
                      r.per_factor_k_steps_pairs[n]) for n in names]
    return out


def _structure_rows(st: StructureResult, names: tuple[str, ...], pairs: dict[str, int]) -> list[MetricRow]:
    """The rows of ``EvalReport.rows`` for the structure section: overall, then per moved factor."""
    m, d, n = st.mask, st.propagation, st.mask.num_pairs
    out = [MetricRow("structure.mask.precision", m.precision, None, n),
           MetricRow("structure.mask.recall", m.recall, None, n),
           MetricRow("structure.mask.size_ratio", m.size_ratio, None, n),
           MetricRow("structure.mask.empty_share", m.empty_share, None, n),
           MetricRow("structure.mask.mask_nodes", m.mask_nodes, None, n),
           MetricRow("structure.mask.changed_nodes", m.changed_nodes, None, n)]
    for name in names:
        f = st.per_factor_mask[name]
        out += [MetricRow(f"structure.mask.{key}.{name}", getattr(f, key), None, f.num_pairs)
                for key in ("precision", "recall", "size_ratio", "empty_share")]
    out += [MetricRow("structure.in_degree.action", st.action_in_degree, None, n),
            MetricRow("structure.in_degree.action.intervened_nodes", st.action_in_degree_intervened, None, n),
            MetricRow("structure.in_degree.action.kept_nodes", st.action_in_degree_kept, None, n),
            MetricRow("structure.in_degree.no_action", st.no_action_in_degree, None, n)]
    out += [MetricRow(f"structure.in_degree.action.{name}", st.per_factor_action_in_degree[name], None, pairs[name])
            for name in names]
    out += [MetricRow(f"structure.do.{key}", getattr(d, key), None, d.num_interventions)
            for key in ("propagating_share", "changed_nodes", "agreement")]
    for name in names:
        f = st.per_factor_propagation[name]
        out += [MetricRow(f"structure.do.{key}.{name}", getattr(f, key), None, f.num_interventions)
                for key in ("propagating_share", "agreement")]
    return out


def structure_in_words(st: StructureResult, factor_names: Sequence[str], num_nodes: int | None = None,
                       context: int = 0) -> str:
    """The structure section said in plain words, for eval.md and the model card: how many nodes an action
    intervenes on against how many its step changes, where each factor's mask is largest, how many in-edges the
    graph keeps, what an intervened node reads besides them (``context``: the model's B28 radius), and whether a
    hard intervention spreads. Every number is one of ``st``'s."""
    m, d = st.mask, st.propagation
    of = f" of the {num_nodes} nodes" if num_nodes else ""
    out = [f"An action intervenes on {m.mask_nodes:.1f}{of} on average, where its step changes "
           f"{m.changed_nodes:.1f}."]
    if m.precision is not None and m.recall is not None:
        out.append(f"{100 * m.precision:.0f} % of the intervened nodes do change, and the mask holds "
                   f"{100 * m.recall:.0f} % of the changed ones.")
    dense = bool(num_nodes) and m.mask_nodes >= 0.9 * num_nodes
    if dense:
        out.append("The mask covers nearly every node, so it does not say where a factor lives; the changed nodes "
                   "(the factor maps) do.")
    sizes = [(st.per_factor_mask[n].mask_nodes, n) for n in factor_names
             if n in st.per_factor_mask and st.per_factor_mask[n].num_pairs]
    if sizes and not dense:
        out.append("Nodes intervened on per factor: " + ", ".join(f"{n} {s:.1f}" for s, n in sizes) + ".")
    split = ""
    if st.action_in_degree_intervened is not None and st.action_in_degree_kept is not None:
        split = (f" ({st.action_in_degree_intervened:.2f} into each node the action intervenes on, "
                 f"{st.action_in_degree_kept:.2f} into each other node)")
    out.append(f"The graph keeps {st.action_in_degree:.2f} in-edges per node (probability above 0.5) under an action"
               f"{split} and {st.no_action_in_degree:.2f} without one.")
    if context:
        side = 2 * context + 1
        out.append(f"An intervened node's new code also reads the codes of the {side}×{side} cells around it, through "
                   "a small network beside the graph (B28): what a step's neighbourhood says reaches it without edges.")
    if d.propagating_share is None:
        out.append("No step changed a node, so do() was not tried.")
    elif d.propagating_share < 0.05:
        out.append(f"Setting one node to a code it takes in a neighbouring image, do(node = code), changed another "
                   f"node in {100 * d.propagating_share:.0f} % of {d.num_interventions} tries: the graph does not "
                   "propagate a change" + ("; the mask puts each change where it happens." if not dense and
                                           (m.precision or 0.0) >= 0.5 else "."))
    else:
        spread = f"{d.changed_nodes:.1f} other nodes" if d.changed_nodes is not None else "other nodes"
        agree = (f", {100 * d.agreement:.0f} % of them to the neighbouring image's code"
                 if d.agreement is not None else "")
        out.append(f"Setting one node to a code it takes in a neighbouring image, do(node = code), changed "
                   f"another node in {100 * d.propagating_share:.0f} % of {d.num_interventions} tries, {spread} on "
                   f"average{agree}: the graph carries part of each change.")
    return " ".join(out)


def structure_paragraph(report: EvalReport) -> list[str]:
    """eval.md's and the model card's opening lines: the structure in plain words (none without the section)."""
    if report.structure is None:
        return []
    words = structure_in_words(report.structure, report.factor_names, report.protocol.get("num_nodes"),
                               report.protocol.get("intervention_context") or 0)
    return ["**Structure, in plain words.** " + words, ""]
