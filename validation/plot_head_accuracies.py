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
    import numpy as np

    from iti.errors import UsageError
    from iti.features import FeatureSet, feature_stem, load_features, require_feature_sets, verify_against_data
    from iti.files import atomic_write, save_npy, write_json
    from iti.fitting import Features, Recipe, fit_head_shifts, seeded_split
    from iti.identity import identity, short_digest
    from iti.plots import head_accuracy_heatmap

    wanted = FeatureSet(Path(cfg.features_dir), cfg.model_name, cfg.dataset_name, cfg.limit,
                        dataset_path=cfg.dataset_path)
    require_feature_sets([wanted])
    record = verify_against_data(wanted, cfg.tqa_path, prompts=False)
    acts, labels, question_ids = load_features(wanted)
    # σ is not plotted: the probing rows stand in for the tuning rows.
    features = Features(acts, labels, question_ids, acts, question_ids, record.num_heads)
    if len(np.unique(labels)) < 2:
        raise UsageError(f"the features of {cfg.dataset_name} hold one label only; probes need true and false rows")
    split = seeded_split(question_ids, cfg.val_ratio, cfg.seed)
    _, report = fit_head_shifts(features, split, Recipe(1, 0.0, "probe", cfg.probe_backend, cfg.seed))
    train, val = split.train, split.val
    scores = report.heads[f"val_{cfg.metric}"].to_numpy().reshape(acts.shape[1], record.num_heads)
    label = {"accuracy": "validation accuracy", "auc": "validation ROC AUC"}[cfg.metric]

    # The hash names the features (by their recorded content) and every setting that changes the scores.
    settings = identity(cfg, {"features_dir": record.id, "dataset_path": record.items, "tqa_path": None})
    stem = (Path(cfg.output_dir) / f"{feature_stem(cfg.model_name, cfg.dataset_name, cfg.limit)}_"
                                   f"{short_digest(settings)}_head_{HEAD_FILE_NAMES[cfg.metric]}")
    save_npy(f"{stem}.npy", scores)
    config = {**dataclasses.asdict(cfg), "train_questions": len(train), "val_questions": len(val),
              "best_head": [int(i) for i in np.unravel_index(np.nanargmax(scores), scores.shape)],
              "best_score": float(np.nanmax(scores)), "mean_score": float(np.nanmean(scores))}
    write_json(f"{stem}.json", config)

    fig = head_accuracy_heatmap(scores, f"{cfg.model_name}: probe {label} ({cfg.dataset_name})", label)
    atomic_write(f"{stem}.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"best head (layer, head) {tuple(config['best_head'])}: {label} {config['best_score']:.4f}; "
          f"mean {config['mean_score']:.4f} -> {stem}.png")


if __name__ == "__main__":
    run_main(main)
