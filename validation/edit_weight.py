"""Bake ITI head shifts into a model's weights and save it as an ordinary model folder.

Probes every head on all questions of --dataset_name (a seeded train/validation split, no test
fold), picks the --num_heads best heads, takes their directions and spreads σ (the latter from
--activations_dataset), then sets each edited layer's o_proj bias to W_o·δ_l (docs/method.md §7;
the public script stored δ_l itself, wrong whenever W_o ≠ I). The folder loads with a plain
AutoModelForCausalLM.from_pretrained and holds the head shifts too (head_shifts.*). Qwen2 and Mistral,
whose configs have no o_proj bias switch, are saved as Llama checkpoints (the same function); the
last line printed says which architecture was saved and why.

python get_activations/get_activations.py --model_name llama2_chat_7B --dataset_name tqa_mc2
python get_activations/get_activations.py --model_name llama2_chat_7B --dataset_name tqa_gen_end_q
python validation/edit_weight.py --model_name llama2_chat_7B --num_heads 48 --alpha 15 --use_center_of_mass
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import EditConfig  # noqa: E402


def base_model_id(cfg: EditConfig, source: str) -> str | None:
    """The hub id of the model being edited, when there is one (for the model card)."""
    from iti.registry import HF_NAMES

    if cfg.model_path:
        return None if Path(source).exists() else source
    return HF_NAMES.get(cfg.output_name)


def main() -> None:
    cfg = parse_config(EditConfig, description=__doc__)

    import dataclasses

    from iti.bake import bake_dir, bake_head_shifts, bake_identity, check_bakeable, save_baked_model
    from iti.bake_folders import check_output_dir
    from iti.errors import UsageError
    from iti.features import FeatureSet, require_feature_sets
    from iti.fingerprint import model_digest, model_fingerprint
    from iti.fitting import fit_head_shifts, recipe_of, seeded_split
    from iti.models import head_geometry, load_model, resolve_model_source
    from iti.run_inputs import read_checked_features

    source = resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path, (cfg.seed, cfg.num_heads, cfg.alpha))
    common = dict(features_dir=Path(cfg.features_dir), model_name=cfg.output_name, limit=cfg.limit,
                  model_path=cfg.model_path, prompt_format=cfg.prompt_format)
    probing = FeatureSet(dataset=cfg.dataset_name, dataset_path=cfg.dataset_path, **common)
    tuning = FeatureSet(dataset=cfg.tuning_dataset,
                        dataset_path=cfg.dataset_path if cfg.tuning_dataset == cfg.dataset_name else None, **common)
    require_feature_sets([probing, tuning])
    model, tokenizer = load_model(source, cfg.device, cfg.dtype, cfg.trust_remote_code)
    geometry = head_geometry(model.config)
    total = geometry.num_layers * geometry.num_heads
    if cfg.num_heads > total:
        raise UsageError(f"--num_heads {cfg.num_heads} exceeds the model's {geometry.num_layers} layers x "
                         f"{geometry.num_heads} heads = {total}; pick at most {total}")
    plan = check_bakeable(model)
    fingerprint = model_fingerprint(model, tokenizer)
    features = read_checked_features(cfg, probing, tuning, geometry, tokenizer, fingerprint, source)
    bake = bake_identity(cfg, model_digest(fingerprint), str(model.dtype), features.provenance.features)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else bake_dir(cfg, bake)
    check_output_dir(output_dir, cfg.overwrite, bake)
    made = dataclasses.replace(features.provenance, base_model=base_model_id(cfg, source),
                               made_by="validation/edit_weight.py", identity=bake)
    features = dataclasses.replace(features, provenance=made)
    shifts, _ = fit_head_shifts(features, seeded_split(features.question_ids, cfg.val_ratio, cfg.seed),
                                recipe_of(cfg, cfg.num_heads, cfg.alpha))
    baked = bake_head_shifts(model, shifts)
    save_baked_model(baked, tokenizer, shifts, output_dir, cfg.overwrite)
    layers = sorted(set(shifts.layers.tolist()))
    print(f"baked {shifts.k} heads ({cfg.method} directions, alpha {cfg.alpha:g}) into the o_proj biases of "
          f"{len(layers)} layers -> {output_dir}")
    print(plan.describe())


if __name__ == "__main__":
    run_main(main)
