"""Bake ITI head shifts into a model's weights and save it as an ordinary model folder.

Probes every head on all questions of --dataset_name (a seeded train/validation split, no test
fold), picks the --num_heads best heads, takes their directions and spreads σ (the latter from
--activations_dataset), then sets each edited layer's o_proj bias to W_o·δ_l (ITI_SPEC.md §7;
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


def feature_set(cfg: EditConfig, dataset: str):
    """The features this run reads of `dataset` (the first --limit questions, when given)."""
    from iti.activations import FeatureSet

    return FeatureSet(Path(cfg.features_dir), cfg.output_name, dataset, cfg.limit, cfg.model_path)


def load_feature_set(cfg: EditConfig, dataset: str, geometry):
    """(head-wise activations, labels, question ids) of the first --limit questions, checked against the model."""
    from iti.activations import load_features
    from iti.errors import UsageError
    from iti.probes import check_finite_activations

    wanted = feature_set(cfg, dataset)
    acts, labels, question_ids = load_features(wanted.features_dir, wanted.model_name, dataset, limit=cfg.limit,
                                               model_path=cfg.model_path)
    expected = (geometry.num_layers, geometry.width)
    if acts.ndim != 3 or acts.shape[1:] != expected:
        raise UsageError(
            f"{dataset} features have per-row shape {acts.shape[1:]} but the model has {geometry.num_layers} layers x "
            f"{geometry.num_heads} heads x head_dim {geometry.head_dim} = {expected}; they come from another model: "
            f"re-run `{wanted.command()}`")
    check_finite_activations(acts)
    return acts, labels, question_ids


def probe_report_summary(cfg: EditConfig, acts, labels, question_ids, probes, geometry, train_rows, val_rows,
                         heads) -> dict:
    """The probe report of the baked heads (spec §9) on the validation questions: there is no test fold here."""
    import numpy as np

    from iti.activations import find_feature_set, load_features
    from iti.report import layer_probe_table, probe_report

    no_test = np.array([], dtype=np.int64)
    layers = None
    if find_feature_set(feature_set(cfg, cfg.dataset_name), "layer_wise") is not None:
        layer_acts, _, _ = load_features(cfg.features_dir, cfg.output_name, cfg.dataset_name, "layer_wise",
                                         limit=cfg.limit, model_path=cfg.model_path)
        layers = layer_probe_table(layer_acts, labels, train_rows, val_rows, no_test, cfg.probe_backend, cfg.seed)
    report = probe_report(acts, labels, question_ids, probes, geometry.num_heads, train_rows, val_rows, no_test, layers)
    return report.summary(heads)


def train_val_rows(question_ids, val_ratio: float, seed: int):
    """Seeded split of all questions into training (1 - val_ratio, rounded down) and validation; rows follow."""
    import numpy as np

    from iti.probes import rows_of_questions, train_val_split

    train, val = train_val_split(np.unique(question_ids), val_ratio, np.random.default_rng(seed))
    return rows_of_questions(question_ids, train), rows_of_questions(question_ids, val), len(train), len(val)


def base_model_id(cfg: EditConfig, source: str) -> str | None:
    """The hub id of the model being edited, when there is one (for the model card)."""
    from iti.models import HF_NAMES

    if cfg.model_path:
        return None if Path(source).exists() else source
    return HF_NAMES.get(cfg.output_name)


def main() -> None:
    cfg = parse_config(EditConfig, description=__doc__)

    from iti.activations import require_feature_sets
    from iti.bake import bake_head_shifts, check_bakeable, check_output_dir, save_baked_model
    from iti.errors import UsageError
    from iti.models import edited_model_dir, head_geometry, input_device, load_model, resolve_model_source
    from iti.probes import train_probes
    from iti.selection import check_features, head_shifts_from_probes
    from iti.validate import check_feature_record

    source = resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path, (cfg.seed, cfg.num_heads, cfg.alpha))
    name = cfg.output_name
    # A baked --dataset_path run carries its dataset's name, so it never replaces a TruthfulQA one.
    folder_name = f"{name}_{cfg.dataset_name}" if cfg.custom else name
    output_dir = Path(cfg.output_dir) if cfg.output_dir else edited_model_dir(folder_name, cfg.seed, cfg.num_heads,
                                                                              cfg.alpha)
    check_output_dir(output_dir, cfg.overwrite)
    datasets = list(dict.fromkeys((cfg.dataset_name, cfg.tuning_dataset)))
    require_feature_sets([feature_set(cfg, d) for d in datasets])
    for dataset in datasets:
        check_feature_record(cfg, feature_set(cfg, dataset))
    model, tokenizer = load_model(source, cfg.device, cfg.dtype, cfg.trust_remote_code)
    geometry = head_geometry(model.config)
    total = geometry.num_layers * geometry.num_heads
    if cfg.num_heads > total:
        raise UsageError(f"--num_heads {cfg.num_heads} exceeds the model's {geometry.num_layers} layers x "
                         f"{geometry.num_heads} heads = {total}; pick at most {total}")
    plan = check_bakeable(model)
    acts, labels, question_ids = load_feature_set(cfg, cfg.dataset_name, geometry)
    tuning_acts, _, _ = load_feature_set(cfg, cfg.tuning_dataset, geometry)
    train_rows, val_rows, num_train, num_val = train_val_rows(question_ids, cfg.val_ratio, cfg.seed)

    method = cfg.method
    device = input_device(model)
    probe_device = str(device) if device.type == "cuda" else "cpu"
    provenance = {
        "model_name": name, "base_model": base_model_id(cfg, source), "model_source": source,
        "dataset_name": cfg.dataset_name, "dataset_path": cfg.dataset_path, "prompt_format": cfg.prompt_format,
        "activations_dataset": cfg.tuning_dataset, "val_ratio": cfg.val_ratio, "limit": cfg.limit,
        "train_questions": num_train, "val_questions": num_val, "made_by": "validation/edit_weight.py",
    }
    check_features(acts, tuning_acts, geometry.num_heads, geometry.head_dim, method)
    probes = train_probes(acts, labels, train_rows, val_rows, geometry.num_heads, backend=cfg.probe_backend,
                          device=probe_device, seed=cfg.seed)
    shifts = head_shifts_from_probes(
        probes, acts, labels, train_rows, val_rows, tuning_acts, geometry.num_heads, geometry.head_dim, cfg.num_heads,
        cfg.alpha, method, cfg.use_random_dir, cfg.probe_backend, cfg.seed, provenance)
    shifts.provenance["probe_report"] = probe_report_summary(cfg, acts, labels, question_ids, probes, geometry,
                                                             train_rows, val_rows, shifts.head_list())
    baked = bake_head_shifts(model, shifts)
    save_baked_model(baked, tokenizer, shifts, output_dir, cfg.overwrite)
    layers = sorted(set(shifts.layers.tolist()))
    print(f"baked {shifts.k} heads ({method} directions, alpha {cfg.alpha:g}) into the o_proj biases of "
          f"{len(layers)} layers -> {output_dir}")
    print(plan.describe())


if __name__ == "__main__":
    run_main(main)
