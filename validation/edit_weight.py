"""Bake ITI head shifts into a model's weights and save it as an ordinary model folder.

Probes every head on all questions of --dataset_name (a seeded train/validation split, no test
fold), picks the --num_heads best heads, takes their directions and spreads σ (the latter from
--activations_dataset), then sets each edited layer's o_proj bias to W_o·δ_l (ITI_SPEC.md §7;
the public script stored δ_l itself, wrong whenever W_o ≠ I). The folder loads with a plain
AutoModelForCausalLM.from_pretrained and holds the head shifts too (head_shifts.*).

python get_activations/get_activations.py --model_name llama2_chat_7B --dataset_name tqa_mc2
python get_activations/get_activations.py --model_name llama2_chat_7B --dataset_name tqa_gen_end_q
python validation/edit_weight.py --model_name llama2_chat_7B --num_heads 48 --alpha 15 --use_center_of_mass
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import add_model_args, output_model_name, run_main  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--dataset_name", default="tqa_mc2", help="features the probes are trained on")
    parser.add_argument("--activations_dataset", default="tqa_gen_end_q",
                        help="features that set the spread σ along each direction (all their rows)")
    parser.add_argument("--num_heads", type=int, default=48, help="K, the number of heads to shift")
    parser.add_argument("--alpha", type=float, default=15, help="strength α: each head is shifted by α·σ·θ")
    parser.add_argument("--val_ratio", type=float, default=0.2, help="fraction of questions held out to rank the probes")
    parser.add_argument("--use_center_of_mass", action="store_true",
                        help="direction = mean of true rows minus mean of false rows (the paper's best)")
    parser.add_argument("--use_random_dir", action="store_true",
                        help="pick the K heads uniformly at random (spec §4) and, unless --use_center_of_mass is "
                             "also given, use random directions, as the public workflow does")
    parser.add_argument("--seed", type=int, default=42, help="seeds the train/validation split and random choices")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions of each feature set")
    parser.add_argument("--features_dir", default="features")
    parser.add_argument("--probe_backend", default="torch", choices=["torch", "sklearn"],
                        help="torch: all probes at once (same optimum); sklearn: one LogisticRegression per head")
    parser.add_argument("--output_dir", default=None,
                        help="default: validation/results_dump/edited_models_dump/"
                             "{model}_seed_{seed}_top_{K}_heads_alpha_{alpha}")
    return parser.parse_args()


def check_arguments(args: argparse.Namespace) -> None:
    from iti.errors import UsageError

    if args.num_heads < 1:
        raise UsageError(f"--num_heads {args.num_heads} must be at least 1")
    if not math.isfinite(args.alpha):
        raise UsageError(f"--alpha {args.alpha} must be a finite number, e.g. 15")
    if not 0 < args.val_ratio < 1:
        raise UsageError(f"--val_ratio {args.val_ratio} must lie strictly between 0 and 1, e.g. 0.2")
    if args.limit is not None and args.limit < 2:
        raise UsageError(f"--limit {args.limit} must be at least 2 (a training and a validation question)")


def extraction_command(args: argparse.Namespace, dataset: str) -> str:
    """The get_activations call that writes the features this run reads."""
    parts = ["python get_activations/get_activations.py", f"--model_name {args.model_name}",
             f"--dataset_name {dataset}"]
    for flag in ("model_prefix", "model_path", "limit"):
        if getattr(args, flag):
            parts.append(f"--{flag} {getattr(args, flag)}")
    if args.features_dir != "features":
        parts.append(f"--features_dir {args.features_dir}")
    return " ".join(parts)


def require_features(args: argparse.Namespace, dataset: str) -> None:
    """Fail before the model loads if a features file is missing, naming the command that makes it."""
    from iti.activations import feature_path
    from iti.errors import UsageError

    for kind in ("head_wise", "labels", "question_ids"):
        path = feature_path(args.features_dir, output_model_name(args), dataset, kind)
        if not path.exists():
            raise UsageError(f"features file {path} not found: make it with `{extraction_command(args, dataset)}`")


def load_feature_set(args: argparse.Namespace, dataset: str, geometry):
    """(head-wise activations, labels, question ids) of the first --limit questions, checked against the model."""
    import numpy as np

    from iti.activations import load_features
    from iti.errors import UsageError
    from iti.probes import check_finite_activations

    acts, labels, question_ids = load_features(args.features_dir, output_model_name(args), dataset)
    expected = (geometry.num_layers, geometry.width)
    if acts.ndim != 3 or acts.shape[1:] != expected:
        raise UsageError(
            f"{dataset} features have per-row shape {acts.shape[1:]} but the model has {geometry.num_layers} layers x "
            f"{geometry.num_heads} heads x head_dim {geometry.head_dim} = {expected}; they come from another model: "
            f"re-run `{extraction_command(args, dataset)}`")
    if len(labels) != len(acts) or len(question_ids) != len(acts):
        raise UsageError(f"{dataset} features, labels and question ids differ in length; re-run "
                         f"`{extraction_command(args, dataset)}`")
    if args.limit is not None:
        available = int(question_ids.max()) + 1 if len(question_ids) else 0
        if args.limit > available:
            raise UsageError(f"--limit {args.limit} asks for more questions than the {available} in the {dataset} "
                             f"features; re-run `{extraction_command(args, dataset)}`")
        rows = np.flatnonzero(question_ids < args.limit)
        acts, labels, question_ids = np.asarray(acts[rows]), labels[rows], question_ids[rows]
    check_finite_activations(acts)
    return acts, labels, question_ids


def train_val_rows(question_ids, val_ratio: float, seed: int):
    """Seeded split of all questions into training (1 - val_ratio, rounded down) and validation; rows follow."""
    import numpy as np

    from iti.probes import rows_of_questions, train_val_split

    train, val = train_val_split(np.unique(question_ids), val_ratio, np.random.default_rng(seed))
    return rows_of_questions(question_ids, train), rows_of_questions(question_ids, val), len(train), len(val)


def base_model_id(args: argparse.Namespace, source: str) -> str | None:
    """The hub id of the model being edited, when there is one (for the model card)."""
    from iti.models import HF_NAMES

    if args.model_path:
        return None if Path(source).exists() else source
    return HF_NAMES.get(output_model_name(args))


def main() -> None:
    args = parse_args()
    check_arguments(args)

    from iti.bake import bake_head_shifts, check_bakeable, save_baked_model
    from iti.errors import UsageError
    from iti.models import edited_model_dir, head_geometry, input_device, load_model, resolve_model_source
    from iti.selection import build_head_shifts

    source = resolve_model_source(args.model_name, args.model_prefix, args.model_path)
    name = output_model_name(args)
    for dataset in (args.dataset_name, args.activations_dataset):
        require_features(args, dataset)
    model, tokenizer = load_model(source, args.device, args.dtype, args.trust_remote_code)
    geometry = head_geometry(model.config)
    total = geometry.num_layers * geometry.num_heads
    if args.num_heads > total:
        raise UsageError(f"--num_heads {args.num_heads} exceeds the model's {geometry.num_layers} layers x "
                         f"{geometry.num_heads} heads = {total}; pick at most {total}")
    check_bakeable(model)
    acts, labels, question_ids = load_feature_set(args, args.dataset_name, geometry)
    tuning_acts, _, _ = load_feature_set(args, args.activations_dataset, geometry)
    train_rows, val_rows, num_train, num_val = train_val_rows(question_ids, args.val_ratio, args.seed)

    method = "center_of_mass" if args.use_center_of_mass else "random" if args.use_random_dir else "probe"
    device = input_device(model)
    provenance = {
        "model_name": name, "base_model": base_model_id(args, source), "model_source": source,
        "dataset_name": args.dataset_name, "activations_dataset": args.activations_dataset,
        "val_ratio": args.val_ratio, "limit": args.limit, "train_questions": num_train, "val_questions": num_val,
        "made_by": "validation/edit_weight.py",
    }
    shifts = build_head_shifts(
        acts, labels, train_rows, val_rows, tuning_acts, geometry.num_heads, geometry.head_dim, args.num_heads,
        args.alpha, method, args.use_random_dir, args.probe_backend, args.seed, provenance,
        device=str(device) if device.type == "cuda" else "cpu")
    bake_head_shifts(model, shifts)
    output_dir = Path(args.output_dir) if args.output_dir else edited_model_dir(name, args.seed, args.num_heads, args.alpha)
    save_baked_model(model, tokenizer, shifts, output_dir)
    layers = sorted(set(shifts.layers.tolist()))
    print(f"baked {shifts.k} heads ({method} directions, alpha {args.alpha:g}) into the o_proj biases of "
          f"{len(layers)} layers -> {output_dir}")


if __name__ == "__main__":
    run_main(main)
