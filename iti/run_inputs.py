"""What a validate_2fold run reads: its items (in the folds' order), how they are prompted, and its features,
checked against the run's model and data and indexed by question in the folds' order."""
from __future__ import annotations

import dataclasses

import numpy as np

from iti.config import HeadShiftOptions, ValidationConfig
from iti.contrastive import ContrastiveDataset
from iti.data import Source, TruthfulQA, load_source
from iti.errors import UsageError
from iti.features import (FeatureSet, checked_digests, feature_sets, find_feature_set, load_features,
                          require_feature_sets, verify_against_data)
from iti.fitting import Features
from iti.geometry import HeadGeometry
from iti.head_shifts import ShiftProvenance
from iti.identity import digest
from iti.probes import check_finite_activations
from iti.prompts import Prompting, prompting_for
from iti.registry import PROBING_DATASETS


def load_items(cfg: ValidationConfig) -> tuple[ContrastiveDataset, Source]:
    """The run's items, first `--limit` of them: a §9 file in file order, else TruthfulQA in MC order; and all that
    was read, which the features are checked against (each input is read once a run)."""
    source = load_source(cfg.dataset_name, cfg.tqa_path, cfg.dataset_path)
    items = source if cfg.custom else ContrastiveDataset("truthfulqa", source.generation_in_mc_order(), source.source)
    return items.first(cfg.limit), source


def items_digest(dataset: ContrastiveDataset) -> str:
    """The evaluated items' content (not their path): what the run's identity records of its data."""
    return digest([dataclasses.astuple(item) for item in dataset.items])


def evaluation_prompting(cfg: ValidationConfig, tokenizer, model_label: str) -> Prompting:
    """TruthfulQA: instruction (default `default`) and the QA primer (docs/method.md §6). A §9 dataset: the bare
    question unless an instruction is asked for, which brings the primer with it (docs/method.md §9). --qa_primer yes
    or no overrides the primer either way."""
    instruction = cfg.instruction_prompt or ("none" if cfg.custom else "default")
    primer = {"yes": True, "no": False}.get(cfg.qa_primer, not cfg.custom or cfg.instruction_prompt is not None)
    return prompting_for(cfg.prompt_format, tokenizer, model_label, instruction_prompt=instruction, primer=primer)


def mc_order_ids(question_ids: np.ndarray, dataset: str, tqa: TruthfulQA) -> np.ndarray:
    """Question ids of a feature set of TruthfulQA in the multiple-choice order the folds use (the generation sets
    index questions in generation order); -1 for rows of no TruthfulQA question (all rows of a transfer set)."""
    if dataset not in PROBING_DATASETS:
        return np.full(len(question_ids), -1)
    if dataset == "tqa_mc2":
        return question_ids
    to_mc = tqa.mc_index_of_generation()
    inside = (question_ids >= 0) & (question_ids < len(to_mc))
    return np.where(inside, to_mc[np.clip(question_ids, 0, len(to_mc) - 1)], -1)


def _read_already(wanted: FeatureSet, source: Source | None) -> Source | None:
    """`source` where the rows of `wanted` are built from it: the run's §9 file, or TruthfulQA for its sets."""
    if isinstance(source, ContrastiveDataset):
        return source if wanted.dataset_path is not None else None
    return source if wanted.dataset in PROBING_DATASETS else None


def read_checked_features(cfg: HeadShiftOptions, probing: FeatureSet, tuning: FeatureSet, geometry: HeadGeometry,
                          tokenizer, fingerprint: dict, model_source: str, found_sets: list[FeatureSet] | None = None,
                          source: Source | None = None) -> Features:
    """The probing set (with its residual streams when they were extracted) and the tuning set, each checked against
    the run's model (`fingerprint`), data and geometry; question ids as the sets store them. `found_sets`: what
    require_feature_sets found for the two before the model loaded; `source`: what load_items read, not read again."""
    probe_text = prompting_for(cfg.prompt_format, tokenizer, model_source).probe_text
    found = dict(zip(("probing", "tuning"), found_sets or require_feature_sets([probing, tuning])))
    records = {name: verify_against_data(wanted, cfg.tqa_path, probe_text, fingerprint, found=found[name],
                                         source=_read_already(wanted, source))
               for name, wanted in (("probing", probing), ("tuning", tuning))}
    acts, labels, question_ids = load_features(probing, found=found["probing"])
    tuning_acts, _, tuning_question_ids = load_features(tuning, found=found["tuning"])
    streams = find_feature_set(probing, "layer_wise")
    layer_acts = load_features(probing, "layer_wise", found=streams)[0] if streams else None
    for dataset, array in ((probing.dataset, acts), (tuning.dataset, tuning_acts)):
        if array.ndim != 3 or array.shape[1:] != (geometry.num_layers, geometry.width):
            raise UsageError(f"the {dataset} features of {probing.model_name} in {probing.features_dir} have per-row "
                             f"shape {array.shape[1:]} but the model has {geometry.num_layers} layers x "
                             f"{geometry.width} (heads x head_dim): they come from another model; {probing.remake}")
    check_finite_activations(acts)
    provenance = ShiftProvenance(model_name=cfg.output_name, model_source=model_source, dataset_name=cfg.dataset_name,
                                 dataset_path=cfg.dataset_path, prompt_format=cfg.prompt_format,
                                 activations_dataset=cfg.tuning_dataset, val_ratio=cfg.val_ratio, limit=cfg.limit,
                                 features={name: record.id for name, record in records.items()})
    return Features(acts, labels, question_ids, tuning_acts, tuning_question_ids, geometry.num_heads, layer_acts,
                    provenance)


def load_run_features(cfg: ValidationConfig, source: Source, num_questions: int, wanted: list[FeatureSet],
                      found: list[FeatureSet], geometry: HeadGeometry, tokenizer, fingerprint: dict,
                      model_source: str) -> tuple[Features, dict[str, str]]:
    """validate_2fold's features (read_checked_features of the sets `found` for the `wanted` feature_sets), rows
    indexed by item in the folds' order (TruthfulQA's MC order, a §9 file's order), covering every question; and the
    SHA-256 of each file read, as checked when it was read."""
    probing = wanted[0]
    features = read_checked_features(cfg, *wanted, geometry, tokenizer, fingerprint, model_source, found, source)
    streams = find_feature_set(probing, "layer_wise")
    digests = checked_digests([*found, *([streams] if streams else [])])
    question_ids, tuning_question_ids = features.question_ids, features.tuning_question_ids
    if isinstance(source, TruthfulQA):
        question_ids = mc_order_ids(question_ids, cfg.dataset_name, source)
        tuning_question_ids = mc_order_ids(tuning_question_ids, cfg.tuning_dataset, source)
    covered = np.unique(question_ids[(question_ids >= 0) & (question_ids < num_questions)])
    if len(covered) < num_questions:
        raise UsageError(f"the {cfg.dataset_name} features of {cfg.output_name} in {probing.features_dir} cover "
                         f"{len(covered)} of the {num_questions} questions this run uses; extract them for all "
                         f"questions with `{dataclasses.replace(probing, limit=None).command()}`")
    provenance = dataclasses.replace(features.provenance, sigma_questions=cfg.sigma_questions, num_fold=cfg.num_fold)
    return dataclasses.replace(features, question_ids=question_ids, tuning_question_ids=tuning_question_ids,
                               provenance=provenance), digests
