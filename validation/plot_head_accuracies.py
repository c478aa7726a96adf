"""Per-head probe validation accuracy as a layers × heads heatmap (the paper's Figure 2).

Probes every head on the seeded train/validation split of all questions (as edit_weight does),
then saves the accuracies (.npy + .json with the config) and the heatmap (.png).

python validation/plot_head_accuracies.py --model_name smollm2_135M_instruct
"""
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import HeadAccuracyConfig  # noqa: E402


def main() -> None:
    cfg = parse_config(HeadAccuracyConfig, description=__doc__)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from iti.activations import FeatureSet, feature_stem, find_feature_set, load_features
    from iti.files import atomic_write, save_npy, write_json
    from iti.probes import rows_of_questions, train_probes, train_val_split

    acts, labels, question_ids = load_features(cfg.features_dir, cfg.model_name, cfg.dataset_name, limit=cfg.limit)
    found = find_feature_set(FeatureSet(Path(cfg.features_dir), cfg.model_name, cfg.dataset_name, cfg.limit))
    meta = json.loads(found.path("meta").read_text())
    train, val = train_val_split(np.unique(question_ids), cfg.val_ratio, np.random.default_rng(cfg.seed))
    result = train_probes(acts, labels, rows_of_questions(question_ids, train), rows_of_questions(question_ids, val),
                          meta["num_heads"], backend=cfg.probe_backend, seed=cfg.seed)
    accuracies = result.val_accuracies

    stem = Path(cfg.output_dir) / f"{feature_stem(cfg.model_name, cfg.dataset_name, cfg.limit)}_head_accuracies"
    save_npy(f"{stem}.npy", accuracies)
    config = {**dataclasses.asdict(cfg), "train_questions": len(train), "val_questions": len(val),
              "best_head": [int(i) for i in np.unravel_index(accuracies.argmax(), accuracies.shape)],
              "best_accuracy": float(accuracies.max()), "mean_accuracy": float(accuracies.mean())}
    write_json(f"{stem}.json", config)

    # Heads sorted by accuracy within each layer, as in the paper's figure.
    ordered = -np.sort(-accuracies, axis=1)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * ordered.shape[1] + 2), max(4, 0.22 * ordered.shape[0] + 1)))
    image = ax.imshow(ordered, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xlabel("head (sorted by accuracy within layer)")
    ax.set_ylabel("layer")
    ax.set_title(f"{cfg.model_name}: probe validation accuracy ({cfg.dataset_name})")
    fig.colorbar(image, ax=ax, label="validation accuracy")
    fig.tight_layout()
    atomic_write(f"{stem}.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"best head (layer, head) {tuple(config['best_head'])}: {config['best_accuracy']:.4f}; "
          f"mean {config['mean_accuracy']:.4f} -> {stem}.png")


if __name__ == "__main__":
    run_main(main)
