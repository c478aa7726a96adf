"""Per-head probe validation accuracy as a layers × heads heatmap (the paper's Figure 2).

Probes every head on the seeded train/validation split of all questions (as edit_weight does),
then saves the accuracies (.npy + .json with the config) and the heatmap (.png).

python validation/plot_head_accuracies.py --model_name smollm2_135M_instruct
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import run_main  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name", default="smollm2_135M_instruct", help="names the features to read")
    parser.add_argument("--dataset_name", default="tqa_mc2")
    parser.add_argument("--features_dir", default="features")
    parser.add_argument("--val_ratio", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--probe_backend", default="torch", choices=["torch", "sklearn"])
    parser.add_argument("--output_dir", default="validation/results_dump/plots")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from iti.activations import feature_path, load_features
    from iti.probes import rows_of_questions, train_probes, train_val_split

    acts, labels, question_ids = load_features(args.features_dir, args.model_name, args.dataset_name)
    meta = json.loads(feature_path(args.features_dir, args.model_name, args.dataset_name, "meta").read_text())
    train, val = train_val_split(np.unique(question_ids), args.val_ratio, np.random.default_rng(args.seed))
    result = train_probes(acts, labels, rows_of_questions(question_ids, train), rows_of_questions(question_ids, val),
                          meta["num_heads"], backend=args.probe_backend, seed=args.seed)
    accuracies = result.val_accuracies

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stem = output / f"{args.model_name}_{args.dataset_name}_head_accuracies"
    np.save(f"{stem}.tmp.npy", accuracies)
    os.replace(f"{stem}.tmp.npy", f"{stem}.npy")
    config = {**vars(args), "train_questions": len(train), "val_questions": len(val),
              "best_head": [int(i) for i in np.unravel_index(accuracies.argmax(), accuracies.shape)],
              "best_accuracy": float(accuracies.max()), "mean_accuracy": float(accuracies.mean())}
    Path(f"{stem}.json.tmp").write_text(json.dumps(config, indent=2))
    os.replace(f"{stem}.json.tmp", f"{stem}.json")

    # Heads sorted by accuracy within each layer, as in the paper's figure.
    ordered = -np.sort(-accuracies, axis=1)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * ordered.shape[1] + 2), max(4, 0.22 * ordered.shape[0] + 1)))
    image = ax.imshow(ordered, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xlabel("head (sorted by accuracy within layer)")
    ax.set_ylabel("layer")
    ax.set_title(f"{args.model_name}: probe validation accuracy ({args.dataset_name})")
    fig.colorbar(image, ax=ax, label="validation accuracy")
    fig.tight_layout()
    fig.savefig(f"{stem}.tmp.png", dpi=120)
    os.replace(f"{stem}.tmp.png", f"{stem}.png")
    print(f"best head (layer, head) {tuple(config['best_head'])}: {config['best_accuracy']:.3f}; "
          f"mean {config['mean_accuracy']:.3f} -> {stem}.png")


if __name__ == "__main__":
    run_main(main)
