"""Do the batched torch probes pick the same heads as scikit-learn's, on real features?

Uses the seeded train/validation split over all questions (as edit_weight does) and prints the
top-K overlap, the per-head validation-accuracy gaps and both wall times.

python benchmarks/probe_agreement.py --model_name smollm2_135M_instruct
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import ArgumentParser, run_main  # noqa: E402


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--model_name", default="smollm2_135M_instruct")
    parser.add_argument("--dataset_name", default="tqa_mc2")
    parser.add_argument("--features_dir", default="features")
    parser.add_argument("--num_heads", type=int, default=48, help="K, the number of top heads compared")
    parser.add_argument("--val_ratio", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np

    from benchmarks.probe_backends import compare_backends
    from iti.features import FeatureSet, load_features, read_record
    from iti.fitting import seeded_split
    from iti.folds import rows_of_questions

    features = FeatureSet(Path(args.features_dir), args.model_name, args.dataset_name)
    acts, labels, question_ids = load_features(features)
    meta = read_record(features)
    questions = np.unique(question_ids)
    split = seeded_split(questions, args.val_ratio, args.seed)
    result = compare_backends(acts, labels, rows_of_questions(question_ids, split.train),
                              rows_of_questions(question_ids, split.val), meta.num_heads, k=args.num_heads,
                              device=args.device, seed=args.seed)
    print(f"{args.model_name} {args.dataset_name}: {len(questions)} questions, {len(labels)} rows, "
          f"{meta.num_layers}x{meta.num_heads} heads of {meta.head_dim}")
    print(f"top-{result.k} heads in common: {result.top_k_overlap}/{result.k}")
    print(f"validation accuracy |torch - sklearn|: mean {result.mean_abs_acc_diff:.4f}, max {result.max_abs_acc_diff:.4f}")
    print(f"wall time: torch {result.torch_seconds:.1f} s, sklearn {result.sklearn_seconds:.1f} s "
          f"({result.sklearn_seconds / result.torch_seconds:.1f}x)")


if __name__ == "__main__":
    run_main(main)
