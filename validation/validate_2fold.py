"""k-fold validation of ITI on TruthfulQA: per fold, probes and head shifts from the development
questions, then MC1/MC2/MC3, generated answers judged for True/Info, CE and KL on the test questions.

python validation/validate_2fold.py --model_name smollm2_135M_instruct --num_heads 8 --alpha 5 \\
    --use_center_of_mass --limit 40 --metrics mc

Needs the activations of --dataset_name and --activations_dataset (get_activations/get_activations.py).
Any contrastive dataset of your own: --dataset_path FILE (.jsonl, .csv) with --dataset_name naming it.
Several --num_heads or --alpha values: each fold chooses one setting; with --sweep, every (K, α) is a run of
its own, all in this process (docs/sweeps.md).
The last line printed is the public workflow's summary line (means over folds); with --sweep, each run's
results file and summary line in turn.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import ValidationConfig  # noqa: E402


def main() -> None:
    cfg = parse_config(ValidationConfig, description=__doc__)
    from iti.validate import run_sweep

    for record in run_sweep(cfg):
        print(f"results: {record['json_path']}")
        print(record["final_line"])


if __name__ == "__main__":
    run_main(main)
