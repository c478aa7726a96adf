"""Extract per-head (o_proj input), layer-wise and optionally MLP activations of a prompt set.

python get_activations/get_activations.py --model_name smollm2_135M_instruct --dataset_name tqa_mc2 --limit 20
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import add_model_args, output_model_name, run_main  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--dataset_name", default="tqa_mc2", help="tqa_mc2, tqa_gen, tqa_gen_end_q, nq_open or trivia_qa")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions of the set's order")
    parser.add_argument("--seed", type=int, default=42, help="draws the extra question of tqa_gen_end_q")
    parser.add_argument("--features_dir", default="features")
    parser.add_argument("--tqa_path", default=None, help="local TruthfulQA folder (default: ./TruthfulQA, else the hub)")
    parser.add_argument("--mlp", action="store_true", help="also save each MLP's output (_mlp_wise.npy)")
    args = parser.parse_args()

    from iti.activations import save_features
    from iti.data import build_prompt_set, check_dataset_name
    from iti.errors import UsageError
    from iti.models import load_model, resolve_model_source

    check_dataset_name(args.dataset_name)
    if args.batch_size < 1:
        raise UsageError(f"--batch_size {args.batch_size} must be at least 1")
    source = resolve_model_source(args.model_name, args.model_prefix, args.model_path)
    prompt_set = build_prompt_set(args.dataset_name, args.tqa_path, args.limit, args.seed)
    model, tokenizer = load_model(source, args.device, args.dtype, args.trust_remote_code)
    name = output_model_name(args)
    config = {"model_source": source, "dtype": str(model.dtype), "limit": args.limit, "seed": args.seed,
              "batch_size": args.batch_size}
    paths = save_features(model, tokenizer, prompt_set, args.features_dir, name, args.batch_size, args.mlp, config)
    print(f"{len(prompt_set)} rows of {prompt_set.num_questions} questions -> {paths['head_wise']} "
          f"(and {', '.join(p.name for k, p in paths.items() if k != 'head_wise')})")


if __name__ == "__main__":
    run_main(main)
