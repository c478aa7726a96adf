"""A head shift on any lm-evaluation-harness task: lm-eval runs the unshifted model (its `hf` model) and the shifted
one (its `steered` model, with the steer file of --head_shifts, or --steer_file) on the task list, and per task and
metric this prints both means and the paired difference over the items, shifted − unshifted, with its 95% bootstrap
interval (as compare_runs does for validate_2fold runs). The table (JSON, CSV) and every item's scores in both runs
(lm-eval's samples, JSON Lines) go to a folder under --output_dir named from the inputs; a metric lm-eval does not
average over items (corpus BLEU, perplexity) gets no difference, and a note says so. Offline, set
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 and use tasks whose data is local (--include_path validation/lm_eval_tasks:
TruthfulQA from the local copy).

python validation/lm_eval_compare.py --head_shifts validation/results_dump/head_shifts_dump/RUN_fold_0_com \\
    --tasks truthfulqa_local_mc2 --include_path validation/lm_eval_tasks
python validation/lm_eval_compare.py --steer_file exported/RUN_fold_0_lm_eval/steer.pt --model_path MODEL \\
    --tasks arc_easy hellaswag --limit 200
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.lm_eval_compare import LmEvalCompareConfig  # noqa: E402


def main() -> None:
    cfg = parse_config(LmEvalCompareConfig, description=__doc__)

    from iti.lm_eval_compare import compare, table_text

    folder, table, notes = compare(cfg)
    print(table_text(table))
    for note in notes:
        print(f"note: {note}")
    print(f"table and every item's scores -> {folder}")


if __name__ == "__main__":
    run_main(main)
