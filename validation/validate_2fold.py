"""k-fold validation of ITI on TruthfulQA: per fold, probes and head shifts from the development
questions, then MC1/MC2/MC3, generated answers judged for True/Info, CE and KL on the test questions.

python validation/validate_2fold.py --model_name smollm2_135M_instruct --num_heads 8 --alpha 5 \\
    --use_center_of_mass --limit 40 --metrics mc

Needs the activations of --dataset_name and --activations_dataset (get_activations/get_activations.py).
The last line printed is the public workflow's summary line (means over folds).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import add_model_args, run_main  # noqa: E402


def parse_metrics(values: list[str]) -> tuple[str, ...]:
    """`--metrics mc ce` and `--metrics mc,ce` both work."""
    return tuple(part for value in values for part in value.split(",") if part)


def main() -> None:
    from iti.judges import DEFAULT_INFO_JUDGE, DEFAULT_TRUTH_JUDGE
    from iti.validate import METRICS, ValidationConfig, run_validation

    defaults = ValidationConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--dataset_name", default="tqa_mc2", help="features that train the probes (tqa_mc2, tqa_gen, tqa_gen_end_q)")
    parser.add_argument("--activations_dataset", default="tqa_gen_end_q", help="features that set the spread σ along each direction")
    parser.add_argument("--num_heads", type=int, default=48, help="K, heads to shift; 0 evaluates the model as it is")
    parser.add_argument("--alpha", type=float, default=15, help="α, the shift strength; 0 evaluates the model as it is")
    parser.add_argument("--num_fold", type=int, default=2)
    parser.add_argument("--val_ratio", type=float, default=0.2, help="share of each fold's development questions held out to rank the probes")
    parser.add_argument("--use_center_of_mass", action="store_true", help="mass-mean directions (the paper's best)")
    parser.add_argument("--use_random_dir", action="store_true", help="random heads and random directions (a control)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--judge_model", "--judge_name", dest="judge_model", default=DEFAULT_TRUTH_JUDGE,
                        help="truth judge: hub id or local folder")
    parser.add_argument("--info_model", "--info_name", dest="info_model", default=DEFAULT_INFO_JUDGE,
                        help="informativeness judge: hub id or local folder")
    parser.add_argument("--instruction_prompt", default="default", help="default, informative or none")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions (MC order); folds split those")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), help=f"any of {', '.join(METRICS)} (default: all)")
    parser.add_argument("--sequential_loading", action=argparse.BooleanOptionalAction, default=True,
                        help="move the model off the GPU and load one judge at a time (default); "
                             "--no-sequential_loading keeps everything loaded")
    parser.add_argument("--owt_path", default=None, help="OpenWebText for CE/KL: .txt (blank-line-separated documents) "
                                                         "or .jsonl with a \"text\" field; default: the hub")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--features_dir", default=defaults.features_dir)
    parser.add_argument("--probe_backend", default="torch", help="torch (batched, fast) or sklearn (the public workflow's)")
    parser.add_argument("--results_dir", default=defaults.results_dir, help="where splits/ and results_dump/ go")
    parser.add_argument("--tqa_path", default=None, help="local TruthfulQA folder (default: ./TruthfulQA, else the hub)")
    args = vars(parser.parse_args())
    args["metrics"] = parse_metrics(args["metrics"])
    record = run_validation(ValidationConfig(**args))
    print(f"results: {record['json_path']}")
    print(record["final_line"])


if __name__ == "__main__":
    run_main(main)
