"""Per-head probe validation accuracy (or ROC AUC) as a layers × heads heatmap (the paper's Figure 2).

Probes every head on the seeded train/validation split of all questions (as edit_weight does),
then saves the scores (.npy + .json with the config) and the heatmap (.png).

python validation/plot_head_accuracies.py --model_name smollm2_135M_instruct
python validation/plot_head_accuracies.py --dataset_name my_set --dataset_path my_set.jsonl --metric auc
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import HeadAccuracyConfig  # noqa: E402

# Output names: the public `_head_accuracies` for accuracy.
HEAD_FILE_NAMES = {"accuracy": "accuracies", "auc": "auc"}


def main() -> None:
    cfg = parse_config(HeadAccuracyConfig, description=__doc__)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from iti.activations import FeatureSet, feature_stem, find_feature_set, load_features, read_meta
    from iti.contrastive import dataset_record
    from iti.errors import UsageError
    from iti.files import atomic_write, save_npy, write_json
    from iti.probes import rows_of_questions, train_probes, train_val_split
    from iti.report import probe_report

    acts, labels, question_ids = load_features(cfg.features_dir, cfg.model_name, cfg.dataset_name, limit=cfg.limit)
    found = find_feature_set(FeatureSet(Path(cfg.features_dir), cfg.model_name, cfg.dataset_name, cfg.limit))
    meta = read_meta(found)
    if cfg.dataset_path is not None and meta.get("dataset_path") != dataset_record(cfg.dataset_path):
        raise UsageError(f"{found.path('meta').name}: the features named {cfg.dataset_name} were made from "
                         f"{meta.get('dataset_path') or 'a built-in set'}, not {cfg.dataset_path}; re-extract them")
    train, val = train_val_split(np.unique(question_ids), cfg.val_ratio, np.random.default_rng(cfg.seed))
    train_rows, val_rows = rows_of_questions(question_ids, train), rows_of_questions(question_ids, val)
    result = train_probes(acts, labels, train_rows, val_rows, meta["num_heads"], backend=cfg.probe_backend,
                          seed=cfg.seed)
    report = probe_report(acts, labels, question_ids, result, meta["num_heads"], train_rows, val_rows,
                          np.array([], dtype=np.int64))
    scores = report.heads[f"val_{cfg.metric}"].to_numpy().reshape(result.val_accuracies.shape)
    label = {"accuracy": "validation accuracy", "auc": "validation ROC AUC"}[cfg.metric]

    stem = (Path(cfg.output_dir) /
            f"{feature_stem(cfg.model_name, cfg.dataset_name, cfg.limit)}_head_{HEAD_FILE_NAMES[cfg.metric]}")
    save_npy(f"{stem}.npy", scores)
    config = {**dataclasses.asdict(cfg), "train_questions": len(train), "val_questions": len(val),
              "best_head": [int(i) for i in np.unravel_index(np.nanargmax(scores), scores.shape)],
              "best_score": float(np.nanmax(scores)), "mean_score": float(np.nanmean(scores))}
    write_json(f"{stem}.json", config)

    # Heads sorted by score within each layer, as in the paper's figure.
    ordered = -np.sort(-scores, axis=1)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * ordered.shape[1] + 2), max(4, 0.22 * ordered.shape[0] + 1)))
    image = ax.imshow(ordered, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xlabel(f"head (sorted by {cfg.metric} within layer)")
    ax.set_ylabel("layer")
    ax.set_title(f"{cfg.model_name}: probe {label} ({cfg.dataset_name})")
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    atomic_write(f"{stem}.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"best head (layer, head) {tuple(config['best_head'])}: {label} {config['best_score']:.4f}; "
          f"mean {config['mean_score']:.4f} -> {stem}.png")


if __name__ == "__main__":
    run_main(main)
