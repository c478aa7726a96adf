"""Extract per-head (o_proj input), layer-wise and optionally MLP activations of a prompt set.

python get_activations/get_activations.py --model_name smollm2_135M_instruct --dataset_name tqa_mc2 --limit 20
python get_activations/get_activations.py --dataset_name tqa_mc2 tqa_gen_end_q --limit 20   # both, one model load
python get_activations/get_activations.py --dataset_name my_set --dataset_path my_set.jsonl --prompt_format chat
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_configs, run_main  # noqa: E402
from iti.config import ActivationsConfig  # noqa: E402


def main() -> None:
    configs = parse_configs(ActivationsConfig, "dataset_name", description=__doc__)
    import dataclasses

    from iti.activations import extraction_locks, feature_record, refuse_replacing, save_features
    from iti.data import build_prompt_set
    from iti.features import FeatureSet
    from iti.models import load_model, resolve_model_source
    from iti.prompts import prompting_for

    first = configs[0]  # the configs differ in their dataset only
    source = resolve_model_source(first.model_name, first.model_prefix, first.model_path)
    # Built before the model loads, so a missing or bad dataset, or features of this name made from other
    # data, fail at once; chat rows need the tokenizer and are built again after it.
    prompt_sets = [build_prompt_set(cfg.dataset_name, cfg.tqa_path, cfg.limit, cfg.seed, cfg.dataset_path)
                   for cfg in configs]
    targets = [FeatureSet(Path(cfg.features_dir), cfg.output_name, cfg.dataset_name, cfg.limit) for cfg in configs]
    for cfg, prompt_set, target in zip(configs, prompt_sets, targets):
        if cfg.prompt_format == "raw":
            refuse_replacing(target, feature_record(prompt_set, cfg.output_name, cfg.limit, cfg.prompt_format),
                             cfg.overwrite)
    # Held from before the model loads to the end: a second extraction of one of these sets refuses at once.
    with extraction_locks(targets):
        model, tokenizer = load_model(source, first.device, first.dtype, first.trust_remote_code)
        prompting = prompting_for(first.prompt_format, tokenizer, source)
        for cfg, prompt_set in zip(configs, prompt_sets):
            if prompting.chat:
                prompt_set = build_prompt_set(cfg.dataset_name, cfg.tqa_path, cfg.limit, cfg.seed, cfg.dataset_path,
                                              prompting.probe_text)
            config = {**dataclasses.asdict(cfg), "model_source": source, "dtype_used": str(model.dtype)}
            paths = save_features(model, tokenizer, prompt_set, cfg.features_dir, cfg.output_name, cfg.batch_size,
                                  cfg.mlp, config, limit=cfg.limit, prompt_format=cfg.prompt_format,
                                  overwrite=cfg.overwrite, locked=True)
            print(f"{len(prompt_set)} rows of {prompt_set.num_questions} questions -> {paths['head_wise']} "
                  f"(and {', '.join(p.name for k, p in paths.items() if k != 'head_wise')})")


if __name__ == "__main__":
    run_main(main)
