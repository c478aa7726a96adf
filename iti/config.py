"""Every script's options, defaults and help, written once: the command lines are generated from these
dataclasses (iti.cli.parse_config) and the code reads the same objects.

Standard library only, so that `--help` and a bad flag are answered before torch is imported.
A path option's default is the project's own folder (absolute); a path the user gives means what it
means to the shell (relative to the current directory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from iti.errors import UsageError
from iti.metrics import BY_NAME, METRIC_OPTIONS
from iti.metrics import METRICS as METRIC_TABLE

REPO_ROOT = Path(__file__).resolve().parents[1]
FEATURES_DIR = REPO_ROOT / "features"
RESULTS_DIR = REPO_ROOT / "validation"
PLOTS_DIR = RESULTS_DIR / "results_dump" / "plots"

BUNDLED_MODEL = "smollm2_135M_instruct"
DEFAULT_TRUTH_JUDGE = "allenai/truthfulqa-truth-judge-llama2-7B"
DEFAULT_INFO_JUDGE = "allenai/truthfulqa-info-judge-llama2-7B"
METRICS = METRIC_OPTIONS
PROBING_DATASETS = ("tqa_mc2", "tqa_gen", "tqa_gen_end_q")
PROMPT_FORMATS = ("raw", "chat")
HEAD_METRICS = ("accuracy", "auc")
DATASET_PATH_HELP = ("a contrastive dataset of your own (ITI_SPEC.md §9): .jsonl, .csv in TruthfulQA.csv's columns, "
                     "or hub:owner/name[:split]; --dataset_name then names its features and outputs")
PROBE_BACKENDS = ("torch", "sklearn")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# Generators of the folds' train/validation draws (iti.probes.all_fold_splits).
SPLIT_RNGS = ("default", "public")
OWT_SAMPLES = 100  # documents for CE and KL (spec §6)
SIGMA_QUESTIONS = ("all", "dev")
# --select_metric choices: the metrics scored per question or derived from them.
SELECT_METRIC_NAMES = {m.name.lower(): m.name for m in METRIC_TABLE if m.name not in ("CE", "KL")}
SELECT_METRICS = tuple(SELECT_METRIC_NAMES)


def option(default, help: str, **cli):
    """A dataclass field with its command-line help; `cli` may hold `aliases` and `choices`."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class ModelOptions:
    model_name: str = option(BUNDLED_MODEL, "registry name; with --model_path it only names outputs")
    model_prefix: str = option("", "prefix added to --model_name, e.g. local_ or honest_")
    model_path: str | None = option(None, "hub id, local model folder or .gguf file (overrides the registry)")
    device: str = option("auto", "auto (all GPUs, else CPU), cpu, cuda, cuda:N or a GPU index")
    dtype: str = option("auto", "auto: float32 on CPU, the checkpoint's half precision on GPU", choices=DTYPES)
    trust_remote_code: bool = option(False, "allow the model's own code from the hub")

    @property
    def output_name(self) -> str:
        """The name outputs carry: `{model_prefix}{model_name}`."""
        return f"{self.model_prefix}{self.model_name}"

    def check(self) -> None:
        """Checks that need neither data nor model; the scripts run them before any heavy import."""


@dataclass
class DatasetOptions(ModelOptions):
    """Where the items come from (a built-in set, or a §9 file named by --dataset_name) and how they are prompted."""
    dataset_path: str | None = option(None, DATASET_PATH_HELP)
    prompt_format: str = option("raw", "raw (`Q: {question} A: {answer}`, the public workflow) or chat (the model's "
                                       "chat template: question as the user turn, answer as the assistant turn)",
                                choices=PROMPT_FORMATS)

    @property
    def custom(self) -> bool:
        return self.dataset_path is not None

    def check_custom_dataset(self, dataset_name: str, min_items: int = 1, limit: int | None = None) -> None:
        """A §9 file is read in full here (it is small and needs no heavy import), so bad items fail at once."""
        check_custom_dataset(self.dataset_path, dataset_name, min_items, limit)


@dataclass
class ActivationsConfig(DatasetOptions):
    dataset_name: str = option("tqa_mc2", "tqa_mc2, tqa_gen, tqa_gen_end_q, nq_open or trivia_qa; with "
                                          "--dataset_path, the name of your dataset")
    batch_size: int = option(16, "prompts per forward pass")
    limit: int | None = option(None, "only the first N questions of the set's order")
    seed: int = option(42, "draws the extra question of tqa_gen_end_q")
    features_dir: str = option(str(FEATURES_DIR), "where the features go")
    tqa_path: str | None = option(None, "local TruthfulQA folder (default: ./TruthfulQA, else the hub)")
    mlp: bool = option(False, "also save each MLP's output (_mlp_wise.npy)")

    def check(self) -> None:
        from iti.data import check_dataset_name

        if self.custom:
            self.check_custom_dataset(self.dataset_name, limit=self.limit)
        else:
            check_dataset_name(self.dataset_name)
        _at_least(1, batch_size=self.batch_size)
        if self.limit is not None:
            _at_least(1, limit=self.limit)


@dataclass
class HeadShiftOptions(DatasetOptions):
    """How head shifts are made from features: shared by validate_2fold and edit_weight."""
    dataset_name: str = option("tqa_mc2", "features that train the probes (tqa_mc2, tqa_gen, tqa_gen_end_q; with "
                                          "--dataset_path, the name your dataset's features were saved under)")
    activations_dataset: str | None = option(None, "features that set the spread σ along each direction (default: "
                                                   "tqa_gen_end_q, or the probing set itself with --dataset_path)")
    num_heads: int = option(48, "K, the number of heads to shift")
    alpha: float = option(15.0, "α, the shift strength: each head is shifted by α·σ·θ")
    val_ratio: float = option(0.2, "share of the development questions held out to rank the probes")
    use_center_of_mass: bool = option(False, "direction = mean of true rows minus mean of false rows (the paper's best)")
    use_random_dir: bool = option(False, "K heads drawn at random and random directions (a control)")
    seed: int = option(42, "seeds the train/validation split and every random choice")
    limit: int | None = option(None, "only the first N questions")
    features_dir: str = option(str(FEATURES_DIR), "where get_activations put the features")
    probe_backend: str = option("torch", "torch (all probes at once, same optimum) or sklearn (one per head, as "
                                         "the public workflow)", choices=PROBE_BACKENDS)

    @property
    def method(self) -> str:
        if self.use_random_dir:
            return "random"
        return "center_of_mass" if self.use_center_of_mass else "probe"

    @property
    def tuning_dataset(self) -> str:
        """The features σ is measured on (spec §4; §9: a custom probing set is its own σ set)."""
        if self.activations_dataset is not None:
            return self.activations_dataset
        return self.dataset_name if self.custom else "tqa_gen_end_q"

    def check(self) -> None:
        super().check()
        if self.use_center_of_mass and self.use_random_dir:
            raise UsageError("--use_center_of_mass and --use_random_dir exclude each other; pick one "
                             "(or neither for probe directions)")
        if self.custom:
            self.check_custom_dataset(self.dataset_name, min_items=2, limit=self.limit)
        elif self.dataset_name not in PROBING_DATASETS:
            raise UsageError(f"--dataset_name {self.dataset_name} cannot train probes on TruthfulQA folds; "
                             f"use one of {', '.join(PROBING_DATASETS)}")
        for alpha in _values(self.alpha):
            if not math.isfinite(alpha):
                raise UsageError(f"--alpha {alpha} must be a finite number, e.g. 15")
        _check_fraction(self.val_ratio)


@dataclass
class ValidationConfig(HeadShiftOptions):
    num_heads: tuple[int, ...] = option((48,), "K, heads to shift; 0 evaluates the model as it is. Several values "
                                               "(with --alpha): each fold picks one setting on its validation "
                                               "questions (--select_metric)")
    alpha: tuple[float, ...] = option((15.0,), "α, the shift strength; 0 evaluates the model as it is; several "
                                               "values: see --num_heads")
    select_metric: str = option("mc2", "with several K or α: the validation score each fold maximises "
                                       "(true*info needs --metrics judge info)", choices=SELECT_METRICS)
    max_kl: float | None = option(None, "with several K or α: only settings whose KL wrt the original model stays "
                                        "within this budget may be chosen (needs kl in --metrics)")
    sigma_questions: str = option("all", "rows of the tuning set that set σ: all (the public workflow's, default) "
                                         "or dev (only the fold's development questions)", choices=SIGMA_QUESTIONS)
    num_fold: int = option(2, "folds of the questions; each is the test set once")
    instruction_prompt: str | None = option(None, "default, informative or none (default: `default` with the QA "
                                                  "primer on TruthfulQA; on a --dataset_path set the bare question, "
                                                  "an instruction asked for brings the primer too)")
    metrics: tuple[str, ...] = option(METRICS, f"any of {', '.join(METRICS)} (default: all; `mc ce` or `mc,ce`)")
    judge_model: str = option(DEFAULT_TRUTH_JUDGE, "truth judge: hub id or local folder", aliases=["--judge_name"])
    info_model: str = option(DEFAULT_INFO_JUDGE, "informativeness judge: hub id or local folder",
                             aliases=["--info_name"])
    sequential_loading: bool = option(True, "move the model off the GPU and load one judge at a time (default); "
                                            "--no-sequential_loading keeps everything loaded")
    owt_path: str | None = option(None, "OpenWebText for CE/KL: .txt (blank-line-separated documents) or .jsonl "
                                        "with a \"text\" field; default: the hub")
    batch_size: int = option(16, "sequences per forward pass")
    max_new_tokens: int = option(50, "longest generated answer, in tokens")
    results_dir: str = option(str(RESULTS_DIR), "where splits/ and results_dump/ go")
    tqa_path: str | None = option(None, "local TruthfulQA folder (default: ./TruthfulQA, else the hub)")
    split_rng: str = option("default", "generator of the folds' train/validation draws: default (one seeded numpy "
                                       "Generator) or public (the public validate_2fold's global NumPy stream, to "
                                       "compare with a published seed question for question)", choices=SPLIT_RNGS)
    owt_samples: int = option(OWT_SAMPLES, f"documents drawn for CE and KL (spec: {OWT_SAMPLES}); fewer is faster "
                                           "and noisier")
    resume: bool = option(False, "keep the folds an earlier run of these settings finished even if batch size, "
                                 "device or loading differ, and fail if there is none (without it, finished folds "
                                 "are kept only when every setting is the same)")

    def __post_init__(self) -> None:
        # One value may be given as a plain number in Python; the command line always gives tuples.
        self.num_heads = tuple(int(k) for k in _values(self.num_heads))
        self.alpha = tuple(float(a) for a in _values(self.alpha))

    @property
    def settings(self) -> list[tuple[int, float]]:
        """Every (K, α) to try, K outer."""
        return [(k, alpha) for k in self.num_heads for alpha in self.alpha]

    @property
    def selects(self) -> bool:
        """Several settings: each fold chooses one on its validation questions."""
        return len(self.settings) > 1

    @property
    def intervenes(self) -> bool:
        return any(k > 0 and alpha != 0 for k, alpha in self.settings)

    def check(self) -> None:
        from iti.prompts import check_instruction_prompt

        super().check()
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise UsageError(f"unknown metric {', '.join(unknown) or '(none given)'}; use any of {', '.join(METRICS)}")
        if self.instruction_prompt is not None:
            check_instruction_prompt(self.instruction_prompt)
        from iti.data import DATASET_NAMES

        if self.custom:
            self.check_custom_dataset(self.dataset_name, min_items=self.num_fold, limit=self.limit)
        elif self.tuning_dataset not in DATASET_NAMES:
            raise UsageError(f"unknown --activations_dataset {self.activations_dataset!r}; "
                             f"known: {', '.join(DATASET_NAMES)}")
        _at_least(1, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, owt_samples=self.owt_samples)
        for k in self.num_heads:
            _at_least(0, num_heads=k)
        needed = selection_options(self.select_metric)
        if self.selects and not needed <= set(self.metrics):
            raise UsageError(f"--select_metric {self.select_metric} needs --metrics {' '.join(sorted(needed))}; "
                             "add them or select by mc2")
        if self.max_kl is not None and "kl" not in self.metrics:
            raise UsageError(f"--max_kl {self.max_kl:g} needs KL: add kl to --metrics")
        if self.sigma_questions == "dev" and not self.custom and self.tuning_dataset not in PROBING_DATASETS:
            raise UsageError(f"--sigma_questions dev needs a TruthfulQA tuning set (one of "
                             f"{', '.join(PROBING_DATASETS)}), not {self.tuning_dataset}")
        _at_least(2, num_fold=self.num_fold)
        if self.limit is not None and self.limit < self.num_fold:
            raise UsageError(f"--limit {self.limit} leaves fewer questions than the {self.num_fold} folds; "
                             f"use --limit {self.num_fold} or more")
        if self.split_rng == "public" and self.use_random_dir:
            raise UsageError("--split_rng public cannot follow the public stream with --use_random_dir (the public "
                             "script draws its random heads and directions from the same stream); drop one of them")


# Settings that change the numbers but are not spelled out in run names: a short hash of those that
# differ from their defaults goes beside the readable name, so no two different runs share a file.
HASHED_SETTINGS = ("dataset_name", "activations_dataset", "probe_backend", "instruction_prompt", "num_fold",
                   "val_ratio", "split_rng", "owt_samples", "dataset_path", "prompt_format",
                   "sigma_questions", "select_metric", "max_kl")
# The settings that fix each fold's questions: split files carry a hash of those not at their defaults.
SPLIT_SETTINGS = ("num_fold", "val_ratio", "split_rng")
# The settings that change a run's numbers; runs that agree on all of them but the seed are repeats.
NUMBER_SETTINGS = ("model_name", "model_prefix", "model_path", "dtype", "dataset_name", "activations_dataset",
                   "probe_backend", "instruction_prompt", "num_fold", "val_ratio", "use_center_of_mass",
                   "use_random_dir", "seed", "num_heads", "alpha", "limit", "max_new_tokens", "judge_model",
                   "info_model", "split_rng", "owt_samples", "dataset_path", "prompt_format",
                   "sigma_questions", "select_metric", "max_kl")


def settings_hash(cfg, names: tuple[str, ...]) -> str:
    """`_` and 8 hex digits naming the values of `names` that differ from the defaults; "" if none does."""
    import hashlib
    import json

    defaults = type(cfg)()
    changed = {name: getattr(cfg, name) for name in names if getattr(cfg, name) != getattr(defaults, name)}
    if not changed:
        return ""
    return "_" + hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class EditConfig(HeadShiftOptions):
    output_dir: str | None = option(None, "default: validation/results_dump/edited_models_dump/"
                                          "{model}_seed_{seed}_top_{K}_heads_alpha_{alpha}")
    overwrite: bool = option(False, "replace --output_dir when it holds an earlier bake (a folder of anything "
                                    "else is never touched)")

    def check(self) -> None:
        super().check()
        _at_least(1, num_heads=self.num_heads)
        if self.limit is not None:
            _at_least(2, limit=self.limit)


@dataclass
class HeadAccuracyConfig:
    model_name: str = option(BUNDLED_MODEL, "names the features to read")
    dataset_name: str = option("tqa_mc2", "features that train the probes")
    dataset_path: str | None = option(None, DATASET_PATH_HELP + " (checked against the features' record)")
    metric: str = option("accuracy", "what the heatmap shows: the probes' validation accuracy or ROC AUC",
                         choices=HEAD_METRICS)
    features_dir: str = option(str(FEATURES_DIR), "where get_activations put the features")
    limit: int | None = option(None, "only the first N questions (the `_limit_N` features, else the first N of "
                                     "the full set)")
    val_ratio: float = option(0.2, "share of the questions held out to score the probes")
    seed: int = option(42, "seeds the train/validation split")
    probe_backend: str = option("torch", "torch (all probes at once) or sklearn (one per head)",
                                choices=PROBE_BACKENDS)
    output_dir: str = option(str(PLOTS_DIR), "where the accuracies and the heatmap go")

    def check(self) -> None:
        _check_fraction(self.val_ratio)
        if self.dataset_path is not None:
            check_custom_dataset(self.dataset_path, self.dataset_name)


@dataclass
class ExportConfig(ModelOptions):
    head_shifts: str | None = option(None, "head shifts to export: a folder from validate_2fold "
                                           "(results_dump/head_shifts_dump/...) or edit_weight")
    import_from: str | None = option(None, "a pyvene folder (IntervenableModel.save) to import as head shifts instead")
    output_dir: str | None = option(None, "where the pyvene folder (export) or the head shifts (import) go")
    allow_other_model: bool = option(False, "apply head shifts made for another model of the same geometry")

    def check(self) -> None:
        if (self.head_shifts is None) == (self.import_from is None):
            raise UsageError("give exactly one of --head_shifts FOLDER (export to pyvene) or --import_from FOLDER "
                             "(import from pyvene)")
        if self.output_dir is None:
            raise UsageError("--output_dir is needed: the folder to write")


def check_custom_dataset(dataset_path: str, dataset_name: str, min_items: int = 1, limit: int | None = None) -> None:
    """--dataset_name must be a plain new name, and the file a §9 dataset with enough items (hub sets load later)."""
    import re

    from iti.contrastive import HUB_PREFIX, load_dataset_file
    from iti.data import DATASET_NAMES

    if dataset_name in DATASET_NAMES or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", dataset_name):
        raise UsageError(f"--dataset_name {dataset_name!r} names your dataset's files: use a new plain name "
                         f"(letters, digits, _ . -), not one of the built-in {', '.join(DATASET_NAMES)}")
    if dataset_path.startswith(HUB_PREFIX):
        return
    items = len(load_dataset_file(dataset_path, dataset_name))
    if limit is not None and limit > items:
        raise UsageError(f"--limit {limit} is more than the {items} items of {dataset_path}; use --limit {items} or less")
    if min(items, limit or items) < min_items:
        raise UsageError(f"{dataset_path} has {min(items, limit or items)} items, fewer than the {min_items} "
                         "the run splits them into; add items or use fewer folds")


def selection_options(select_metric: str) -> set[str]:
    """The --metrics options that compute `select_metric` (a derived metric needs its factors')."""
    metric = BY_NAME[SELECT_METRIC_NAMES[select_metric]]
    names = metric.product_of or (metric.name,)
    return {BY_NAME[name].option for name in names}


def _values(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _at_least(minimum: int, **values: int) -> None:
    for flag, value in values.items():
        if value < minimum:
            raise UsageError(f"--{flag} {value} must be at least {minimum}")


def _check_fraction(val_ratio: float) -> None:
    if not 0 < val_ratio < 1:
        raise UsageError(f"--val_ratio {val_ratio} must lie strictly between 0 and 1, e.g. 0.2")
