"""``python -m train`` / ``causalvq-train``: train and evaluate CausalVQ models from a recipe.

Examples::

    python -m train all --recipe tiny --out runs/tiny
    python -m train stage1 --recipe cpu --set stage1.steps=200 --out runs/cpu
    python -m train stage2 --recipe cpu --out runs/cpu                 # reads runs/cpu/stage1/
    python -m train all --recipe cpu --out runs/cpu --resume           # continue a killed run exactly
    python -m train evaluate --checkpoint runs/cpu/model               # report in runs/cpu/model/eval/
    python -m train probe --checkpoint assets/causalvq-shapes3d        # add a factor probe to a release
    torchrun --nproc_per_node 2 -m train stage1 --recipe cpu --out runs/ddp
    python -m train all --recipe paper --dataset-path 3dshapes.h5 --push-to-hub me/ctvae-shapes3d
    python -m train all --recipe cpu --set data.name=cars3d --dataset-path cars/      # any dataset: docs/data.md

Exit status: 0 on success, 2 for a problem stated in one line on stderr (bad recipe, missing file, earlier
results without --resume, unwritable folder, a full disk, diverged loss).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from causalvq import kernels
from train.distributed import DeviceError
from train.loop import TrainingError
from train.recipes import RecipeError, builtin_recipes, load_recipe
from train.run import Options, RunError, command_all, command_evaluate, command_probe, command_stage, default_out

COMMANDS = {"stage1": partial(command_stage, stage=1), "stage2": partial(command_stage, stage=2), "all": command_all,
            "evaluate": command_evaluate, "probe": command_probe}
HELP = {
    "stage1": "train the image model (encoder, quantizer, decoder)",
    "stage2": "train the causal-transition layer on a stage-1 checkpoint",
    "all": "stage 1, stage 2 and the evaluation",
    "evaluate": "evaluate a checkpoint on the test split",
    "probe": "fit a factor probe on a checkpoint's codes (probe.safetensors + probe.json)",
}
CHECKPOINT_COMMANDS = ("evaluate", "probe")  # read the checkpoint's recipe.toml and write into it by default


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--recipe", default=None,
                        help=f"built-in recipe ({', '.join(builtin_recipes())}) or a .toml path; default cpu "
                             "(evaluate, probe: the checkpoint's recipe.toml)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, dotted key and TOML value (e.g. stage1.steps=100); repeatable")
    common.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/<recipe>; evaluate, probe: the checkpoint folder)")
    common.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto picks CUDA when available")
    common.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    common.add_argument("--dataset-path", default=None,
                        help="the real dataset file or folder (data.path): 3dshapes.h5, the dSprites .npz, your .npz, "
                             "the SmallNORB, Cars3D or CelebA folder (with --set data.name=...)")
    common.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                        help="upload the resulting release folder to this Hugging Face Hub repo")
    common.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 avoids oversubscribing busy machines)")
    common.add_argument("--kernel", choices=("fused", "torch"), default="fused",
                        help="pairwise scores: the fused C++ kernel (built once, ~1 min, cached) or the plain-torch "
                             "path; same numbers (default: fused, falling back to torch without a compiler)")
    common.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--resume", action="store_true",
                          help="continue the run in --out from its last checkpoint (bit-identical)")

    examples = __doc__.split("Examples::")[1].split("Exit status")[0]
    parser = argparse.ArgumentParser(prog="python -m train",
                                     description="Train and evaluate CausalVQ (CT-VAE) models from a recipe.",
                                     epilog="examples:" + examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{stage1,stage2,all,evaluate,probe}")
    sub.add_parser("stage1", parents=[common, training], help=HELP["stage1"], description=HELP["stage1"])
    p = sub.add_parser("stage2", parents=[common, training], help=HELP["stage2"], description=HELP["stage2"])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="stage-1 release folder to start from (default <out>/stage1)")
    sub.add_parser("all", parents=[common, training], help=HELP["all"], description=HELP["all"])
    p = sub.add_parser("evaluate", parents=[common], help=HELP["evaluate"], description=HELP["evaluate"])
    p.add_argument("--checkpoint", type=Path, required=True, help="release folder (config.json + model.safetensors)")
    p = sub.add_parser("probe", parents=[common], help=HELP["probe"], description=HELP["probe"])
    p.add_argument("--checkpoint", type=Path, required=True, help="release folder (config.json + model.safetensors)")
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    """Resolve the recipe (with --set, --seed, --dataset-path) and the folders."""
    checkpoint = getattr(args, "checkpoint", None)
    recipe_name = args.recipe
    if recipe_name is None:
        own = checkpoint / "recipe.toml" if args.command in CHECKPOINT_COMMANDS else None
        recipe_name = str(own) if own is not None and own.is_file() else "cpu"
    overrides: list[str | tuple[str, object]] = list(args.overrides)
    if args.seed is not None:
        overrides.append(("seed", args.seed))
    if args.dataset_path is not None:
        overrides.append(("data.path", str(args.dataset_path)))
    recipe = load_recipe(recipe_name, overrides)
    out = args.out
    if out is None:
        out = checkpoint if args.command in CHECKPOINT_COMMANDS else default_out(recipe)
    return Options(recipe=recipe, out=Path(out), resume=getattr(args, "resume", False), device=args.device,
                   checkpoint=checkpoint, push_to_hub=args.push_to_hub, progress=args.progress)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args.kernel == "fused":
        kernels.enable()  # on failure: plain torch, and one line on stderr saying so
    try:
        opts = options_from_args(args)
        result = COMMANDS[args.command](opts)
    except (RecipeError, RunError, TrainingError, DeviceError, OSError) as err:  # OSError: a full disk, ...
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(f"{args.command}: done, results in {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
