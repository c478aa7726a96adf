"""Every script's options, defaults and help, written once: the command lines are generated from these
dataclasses (iti.cli.parse_config) and the code reads the same objects; each field's metadata (iti.options.option)
gives its role in identities and what `check()` verifies without data. Standard library only at import, so that
`--help` and a bad flag are answered before torch is imported. A path option's default is the project's own folder
(absolute); a path the user gives means what it means to the shell (relative to the current directory).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from iti.constants import (
    BUNDLED_MODEL,
    DEFAULT_INFO_JUDGE,
    DEFAULT_TRUTH_JUDGE,
    FEATURES_DIR,
    HEAD_METRICS,
    OWT_SAMPLES,
    PLOTS_DIR,
    PROBE_BACKENDS,
    RESULTS_DIR,
    SIGMA_QUESTIONS,
    SPLIT_RNGS,
)
from iti.errors import UsageError
from iti.metrics import BY_NAME, METRIC_OPTIONS, PER_QUESTION_OR_DERIVED
from iti.options import (
    DATASET_PATH_HELP,
    EXECUTION,
    NUMBERS,
    SHIFTS,
    DatasetOptions,
    ModelOptions,
    Options,
    check_alpha,
    check_dataset,
    check_plain_name,
    option,
    seed_option,
    values_of,
)
from iti.registry import DATASET_NAMES, PROBING_DATASETS, VALIDATION_DATASETS

METRICS = METRIC_OPTIONS
# --select_metric choices: the metrics scored per question or derived from them.
SELECT_METRIC_NAMES = {name.lower(): name for name in PER_QUESTION_OR_DERIVED}
SELECT_METRICS = tuple(SELECT_METRIC_NAMES)
# --control choices: none, or the random-direction control of docs/method.md §11 (iti.control).
CONTROLS = ("none", "random_direction")
# Where validation/export_head_shifts.py writes head shifts for: pyvene's IntervenableModel, lm-eval's steered model.
EXPORT_FORMATS = ("pyvene", "lm_eval")


@dataclass
class ActivationsConfig(DatasetOptions):
    dataset_name: str = option("tqa_mc2", "tqa_mc2, tqa_gen, tqa_gen_end_q, nq_open or trivia_qa; with "
                                          "--dataset_path, the name of your dataset", NUMBERS, named=True)
    batch_size: int = option(16, "prompts per forward pass", EXECUTION, minimum=1)
    limit: int | None = option(None, "only the first N questions of the set's order", NUMBERS, named=True, minimum=1)
    seed: int = seed_option("draws the extra question of tqa_gen_end_q")
    features_dir: str = option(str(FEATURES_DIR), "where the features go", EXECUTION, folder="write")
    tqa_path: str | None = option(None, "local TruthfulQA folder (default: ./TruthfulQA, else the hub)", NUMBERS,
                                  folder="existing")
    mlp: bool = option(False, "also save each MLP's output (_mlp_wise.npy)", NUMBERS)
    overwrite: bool = option(False, "replace features of this name that were made differently (another model, "
                                    "dataset file, prompt format, limit or dtype); without it they are kept and "
                                    "the run refuses", EXECUTION)

    def _check(self) -> None:
        super()._check()
        check_dataset(self.dataset_path, self.dataset_name, limit=self.limit)


@dataclass
class HeadShiftOptions(DatasetOptions):
    """How head shifts are made from features: shared by validate_2fold and edit_weight."""
    dataset_name: str = option(VALIDATION_DATASETS[0], "features that train the probes (tqa_mc2, tqa_gen, "
                                                       "tqa_gen_end_q; with --dataset_path, the name your dataset's "
                                                       "features were saved under)", SHIFTS, named=True)
    activations_dataset: str | None = option(None, "features that set the spread σ along each direction (default: "
                                                   "tqa_gen_end_q, or the probing set itself with --dataset_path)",
                                             SHIFTS)
    num_heads: int = option(48, "K, the number of heads to shift", SHIFTS, named=True, minimum=1)
    alpha: float = option(15.0, "α, the shift strength: each head is shifted by α·σ·θ", SHIFTS, named=True)
    val_ratio: float = option(0.2, "share of the development questions held out to rank the probes", SHIFTS,
                              split=True, fraction=True)
    use_center_of_mass: bool = option(False, "direction = mean of true rows minus mean of false rows (the paper's "
                                             "best)", SHIFTS, named=True)
    use_random_dir: bool = option(False, "K heads drawn at random and random directions (a control)", SHIFTS,
                                  named=True)
    seed: int = seed_option("seeds the train/validation split and every random choice", named=True, split=True)
    limit: int | None = option(None, "only the first N questions", NUMBERS, named=True, split=True, minimum=1)
    features_dir: str = option(str(FEATURES_DIR), "where get_activations put the features", SHIFTS, location=True,
                               folder="read")
    probe_backend: str = option("torch", "torch (all probes at once, same optimum) or sklearn (one per head, as "
                                         "the public workflow)", SHIFTS, choices=PROBE_BACKENDS)
    tqa_path: str | None = option(None, "local TruthfulQA folder (default: ./TruthfulQA, else the hub)", NUMBERS,
                                  split=True, location=True, folder="existing")

    @property
    def method(self) -> str:
        return "random" if self.use_random_dir else "center_of_mass" if self.use_center_of_mass else "probe"

    minimum_items = 2  # the questions are split into training and validation ones

    @property
    def tuning_dataset(self) -> str:
        """The features σ is measured on (docs/method.md §4; §9: a custom probing set is its own σ set)."""
        default = self.dataset_name if self.custom else VALIDATION_DATASETS[1]
        return default if self.activations_dataset is None else self.activations_dataset

    def _check(self) -> None:
        super()._check()
        for alpha in values_of(self.alpha):
            check_alpha(alpha)
        if self.use_center_of_mass and self.use_random_dir:
            raise UsageError("--use_center_of_mass and --use_random_dir exclude each other; pick one "
                             "(or neither for probe directions)")
        self.known_questions = self.limit  # how many questions the work takes, where the options tell
        if self.custom:
            self.known_questions = check_dataset(self.dataset_path, self.dataset_name, self.minimum_items, self.limit)
        elif self.dataset_name not in PROBING_DATASETS:
            raise UsageError(f"--dataset_name {self.dataset_name} cannot train probes on TruthfulQA folds; "
                             f"use one of {', '.join(PROBING_DATASETS)}")

    def _check_counts(self) -> None:
        from iti.folds import num_train

        if self.known_questions is not None:
            num_train(self.known_questions, self.val_ratio)


@dataclass
class ValidationConfig(HeadShiftOptions):
    num_heads: tuple[int, ...] = option((48,), "K, heads to shift; 0 evaluates the model as it is. Several values "
                                               "(with --alpha): each fold picks one setting on its validation "
                                               "questions (--select_metric), or with --sweep each is a run", SHIFTS,
                                        named=True, minimum=0)
    alpha: tuple[float, ...] = option((15.0,), "α, the shift strength; 0 evaluates the model as it is; several "
                                               "values: see --num_heads", SHIFTS, named=True)
    sweep: bool = option(False, "with several --num_heads or --alpha: run every (K, α) instead of choosing one, "
                                "each as the run of that K and α alone (its own name, files, record and resume), all "
                                "in this one process: the model loaded, the features read and the probes trained once "
                                "per fold", EXECUTION)
    select_metric: str = option("mc2", "with several K or α: the validation score each fold maximises "
                                       "(true*info needs --metrics judge info)", SHIFTS, choices=SELECT_METRICS)
    max_kl: float | None = option(None, "with several K or α: only settings whose KL wrt the original model stays "
                                        "within this budget may be chosen (needs kl in --metrics). A run that "
                                        "differs from another only in this reads that run's scored settings instead "
                                        "of scoring them again", SHIFTS, minimum=0, choice_only=True)
    select_ratio: float = option(0.2, "with several K or α: share of each fold's development questions set aside to "
                                      "score the settings; the shifts scored are built from the others", SHIFTS,
                                 split=True, fraction=True)
    control: str = option("none", "random_direction: beside ITI, the same selection (or single setting) with a seeded "
                                  "random unit direction at each of the same heads, σ measured along it; the record "
                                  "gives ITI − control over the test questions with a paired bootstrap interval",
                          SHIFTS, choices=CONTROLS, added=True)
    sigma_questions: str = option("all", "rows of the tuning set that set σ: all (the public workflow's, default) "
                                         "or dev (only the fold's development questions)", SHIFTS,
                                  choices=SIGMA_QUESTIONS)
    num_fold: int = option(2, "folds of the questions; each is the test set once", NUMBERS, split=True, minimum=2)
    instruction_prompt: str | None = option(None, "default, informative or none (default: `default` with the QA "
                                                  "primer on TruthfulQA; on a --dataset_path set the bare question, "
                                                  "an instruction asked for brings the primer too)", NUMBERS)
    qa_primer: str = option("auto", "the six-shot QA primer before the question: auto (TruthfulQA: yes; a "
                                    "--dataset_path set: only with an --instruction_prompt), yes or no", NUMBERS,
                            choices=("auto", "yes", "no"))
    metrics: tuple[str, ...] = option(METRICS, f"any of {', '.join(METRICS)} (default: all; `mc ce` or `mc,ce`)",
                                      NUMBERS)
    judge_model: str = option(DEFAULT_TRUTH_JUDGE, "truth judge: hub id or local folder", NUMBERS, location=True,
                              aliases=["--judge_name"])
    info_model: str = option(DEFAULT_INFO_JUDGE, "informativeness judge: hub id or local folder", NUMBERS,
                             location=True, aliases=["--info_name"])
    sequential_loading: bool = option(True, "move the model off the GPU and load one judge at a time (default); "
                                            "--no-sequential_loading keeps everything loaded", EXECUTION)
    owt_path: str | None = option(None, "OpenWebText for CE/KL: .txt (blank-line-separated documents) or .jsonl "
                                        "with a \"text\" field; default: the hub", NUMBERS, location=True,
                                  file="read")
    batch_size: int = option(16, "sequences per forward pass", EXECUTION, minimum=1)
    max_new_tokens: int = option(50, "longest generated answer, in tokens", NUMBERS, minimum=1)
    results_dir: str = option(str(RESULTS_DIR), "where splits/ and results_dump/ go", EXECUTION, folder="write")
    split_rng: str = option("default", "generator of the folds' train/validation draws: default (one seeded numpy "
                                       "Generator) or public (the public validate_2fold's global NumPy stream, to "
                                       "compare with a published seed question for question)", SHIFTS, split=True,
                            choices=SPLIT_RNGS)
    owt_samples: int = option(OWT_SAMPLES, f"documents drawn for CE and KL (docs/method.md §6: {OWT_SAMPLES}); fewer is faster "
                                           "and noisier", NUMBERS, minimum=1)
    resume: bool = option(False, "require an earlier run of these settings and keep the folds it finished (they are "
                                 "kept without this flag too, whatever batch size, device or loading it used; the "
                                 "flag makes a missing run an error)", EXECUTION)

    def __post_init__(self) -> None:
        # One value may be given as a plain number in Python; the command line always gives tuples.
        self.num_heads = tuple(int(k) for k in values_of(self.num_heads))
        self.alpha = tuple(float(a) for a in values_of(self.alpha))

    @property
    def settings(self) -> list[tuple[int, float]]:
        return [(k, alpha) for k in self.num_heads for alpha in self.alpha]

    @property
    def minimum_items(self) -> int:
        """Items the folds split so that each fold has some to train on and some to validate on."""
        from iti.folds import fewest_questions

        return fewest_questions(self.num_fold, self.val_ratio)

    @property
    def selects(self) -> bool:
        """Several settings, not swept: each fold chooses one on its validation questions."""
        return len(self.settings) > 1 and not self.sweep

    @property
    def cells(self) -> list[ValidationConfig]:
        """The runs these options make: with --sweep one per (K, α), each with the options of that setting alone;
        else this one."""
        if not self.sweep:
            return [self]
        return [dataclasses.replace(self, num_heads=(k,), alpha=(alpha,)) for k, alpha in dict.fromkeys(self.settings)]

    @property
    def intervenes(self) -> bool:
        return any(k > 0 and alpha != 0 for k, alpha in self.settings)

    def _check_counts(self) -> None:
        """The folds of a known number of questions, drawn as the run draws them (it is cheap), so that a split the
        run would refuse is refused here."""
        from iti.folds import all_fold_splits, held_for_selection

        if self.known_questions is None:
            return
        for train, val, _ in all_fold_splits(self.known_questions, self.num_fold, self.val_ratio, self.seed,
                                             self.split_rng):
            if self.selects:
                held_for_selection(len(train) + len(val), self.select_ratio, self.val_ratio)

    def _check(self) -> None:
        from iti.prompts import check_instruction_prompt

        super()._check()
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise UsageError(f"unknown metric {', '.join(unknown) or '(none given)'}; use any of {', '.join(METRICS)}")
        if self.instruction_prompt is not None:
            check_instruction_prompt(self.instruction_prompt)
        if not self.custom and self.tuning_dataset not in DATASET_NAMES:
            raise UsageError(f"unknown --activations_dataset {self.activations_dataset!r}; "
                             f"known: {', '.join(DATASET_NAMES)}")
        needed = selection_options(self.select_metric)
        if self.selects and not needed <= set(self.metrics):
            raise UsageError(f"--select_metric {self.select_metric} needs --metrics {' '.join(sorted(needed))}; "
                             "add them or select by mc2")
        if self.max_kl is not None and self.sweep:
            raise UsageError(f"--max_kl {self.max_kl:g} bounds the KL of the setting each fold chooses, but --sweep "
                             "chooses none (every K and α is a run, its KL in its record): drop one of them")
        if self.max_kl is not None and "kl" not in self.metrics:
            raise UsageError(f"--max_kl {self.max_kl:g} needs KL: add kl to --metrics")
        if self.control != "none" and not self.intervenes:
            raise UsageError(f"--control {self.control} compares the shifts with random ones, but no setting shifts "
                             "anything (K 0 or alpha 0 only); drop --control or give K and alpha above 0")
        if self.sigma_questions == "dev" and not self.custom and self.tuning_dataset not in PROBING_DATASETS:
            raise UsageError(f"--sigma_questions dev needs a TruthfulQA tuning set (one of "
                             f"{', '.join(PROBING_DATASETS)}), not {self.tuning_dataset}")
        if self.limit is not None and self.limit < self.num_fold:
            raise UsageError(f"--limit {self.limit} leaves fewer questions than the {self.num_fold} folds; "
                             f"use --limit {self.num_fold} or more")
        if self.split_rng == "public" and self.use_random_dir:
            raise UsageError("--split_rng public cannot follow the public stream with --use_random_dir (the public "
                             "script draws its random heads and directions from the same stream); drop one of them")


@dataclass
class CollectConfig(ValidationConfig):
    """collect_sweep's options. Every validate_2fold flag is accepted, so a sweep passes its own on; those that
    name runs select them (model, prefix, method, dataset, limit, and the seed when given), and runs that
    differ in the others make rows of their own."""
    seed: int | None = seed_option("only runs of this seed (default: every seed)", default=None, named=True)
    by_category: bool = option(False, "also each category's difference from the baseline (table and one plot per "
                                      "setting)", EXECUTION)
    category_metric: str = option("MC2", "the metric of the per-category table and plots", EXECUTION,
                                  choices=PER_QUESTION_OR_DERIVED)


@dataclass
class EditConfig(HeadShiftOptions):
    output_dir: str | None = option(None, "default: validation/results_dump/edited_models_dump/{model}[_{dataset}]"
                                          "_seed_{seed}_top_{K}_heads_alpha_{alpha}[_limit_{N}]_{hash}, the hash "
                                          "naming every setting that changes a number", EXECUTION, folder="write")
    overwrite: bool = option(False, "replace --output_dir when it holds an earlier bake of the same settings (a "
                                    "folder of anything else is never touched)", EXECUTION)

    def _check(self) -> None:
        from iti.bake_folders import check_bake_target

        super()._check()
        check_bake_target(self)


@dataclass
class HeadAccuracyConfig(Options):
    model_name: str = option(BUNDLED_MODEL, "names the features to read", NUMBERS, named=True)
    dataset_name: str = option("tqa_mc2", "features that train the probes", NUMBERS, named=True)
    dataset_path: str | None = option(None, DATASET_PATH_HELP + " (checked against the features' record)", NUMBERS)
    tqa_path: str | None = option(None, "local TruthfulQA folder the features were made from (default: "
                                        "./TruthfulQA, else the hub; checked against the features' record)", NUMBERS,
                                  folder="existing")
    metric: str = option("accuracy", "what the heatmap shows: the probes' validation accuracy or ROC AUC", NUMBERS,
                         choices=HEAD_METRICS)
    features_dir: str = option(str(FEATURES_DIR), "where get_activations put the features", NUMBERS, folder="read")
    limit: int | None = option(None, "only the first N questions (the `_limit_N` features, else the first N of "
                                     "the full set)", NUMBERS, named=True, minimum=2)
    val_ratio: float = option(0.2, "share of the questions held out to score the probes", NUMBERS, fraction=True)
    seed: int = seed_option("seeds the train/validation split")
    probe_backend: str = option("torch", "torch (all probes at once) or sklearn (one per head)", NUMBERS,
                                choices=PROBE_BACKENDS)
    output_dir: str = option(str(PLOTS_DIR), "where the accuracies and the heatmap go", EXECUTION, folder="write")

    def _check(self) -> None:
        from iti.folds import num_train

        super()._check()
        check_plain_name("--model_name", self.model_name)
        check_dataset(self.dataset_path, self.dataset_name)
        if self.limit is not None:
            num_train(self.limit, self.val_ratio)


@dataclass
class AppliedShiftOptions(ModelOptions):
    """A command that applies a head-shift folder to the model (or, in its place, another source of shifts that the
    command adds): the folder, and whether shifts made for another model may be applied (HeadShifts.check_model)."""
    head_shifts: str | None = option(None, "the head shifts: a folder from validate_2fold "
                                           "(results_dump/head_shifts_dump/...) or edit_weight", NUMBERS,
                                     folder="existing")
    allow_other_model: bool = option(False, "apply head shifts made for another model of the same geometry", EXECUTION)


@dataclass
class ExportConfig(AppliedShiftOptions):
    import_from: str | None = option(None, "a pyvene folder (IntervenableModel.save) to import as head shifts "
                                           "instead", NUMBERS, folder="existing")
    output_dir: str | None = option(None, "where the export (a pyvene folder, or the lm-eval steer file and its "
                                          "README) or the head shifts (import) go", EXECUTION, folder="write")
    overwrite: bool = option(False, "replace what --output_dir holds when that is only what this command writes (an "
                                    "export of the same --format; head shifts when importing)", EXECUTION)
    format: str = option("pyvene", "what to export to: a pyvene folder (IntervenableModel.load) or an "
                                   "lm-evaluation-harness steer file (lm_eval --model steered)", EXECUTION,
                         choices=EXPORT_FORMATS)

    def _check(self) -> None:
        from iti.files import check_replaceable
        from iti.head_shifts import METADATA_FILE, TENSORS_FILE

        super()._check()
        if (self.head_shifts is None) == (self.import_from is None):
            raise UsageError("give exactly one of --head_shifts FOLDER (export to pyvene) or --import_from FOLDER "
                             "(import from pyvene)")
        if self.output_dir is None:
            raise UsageError("--output_dir is needed: the folder to write")
        if self.import_from and self.format != "pyvene":
            raise UsageError(f"--import_from reads pyvene folders only; drop --format {self.format}")
        shifts = "|".join(map(re.escape, (TENSORS_FILE, METADATA_FILE)))
        # An export: pyvene's IntervenableModel.save files (config.json, one intkey_* state per layer) or lm-eval's
        # steer file and its README, and the shifts.
        exports = {"pyvene": (rf"{shifts}|config\.json|intkey_.+\.(bin|safetensors)", "a pyvene export"),
                   "lm_eval": (rf"{shifts}|steer\.pt|README\.md", "an lm-eval steer export")}
        ours = (shifts, "head shifts") if self.import_from else exports[self.format]
        check_replaceable("--output_dir", self.output_dir, self.overwrite, *ours)


def selection_options(select_metric: str) -> set[str]:
    """The --metrics options that compute `select_metric` (a derived metric needs its factors')."""
    metric = BY_NAME[SELECT_METRIC_NAMES[select_metric]]
    names = metric.product_of or (metric.name,)
    return {BY_NAME[name].option for name in names}


@dataclass
class LmEvalCheckConfig(ModelOptions):
    limit: int = option(5, "the first N TruthfulQA questions (MC order) to score both ways", EXECUTION, minimum=1)
    questions: tuple[int, ...] = option((), "these questions (MC-order indices from 0) instead of the first --limit",
                                        EXECUTION, minimum=0)
    head_shifts: str | None = option(None, "also check these head shifts (a head-shift folder): lm-eval steered with "
                                           "their steer file vs the baked model", EXECUTION, folder="existing")
    tqa_path: str | None = option(None, "a TruthfulQA folder (TruthfulQA.csv, data/mc_task.json); default "
                                        "./TruthfulQA, else the hub", EXECUTION, folder="existing")
    batch_size: int = option(8, "lm-eval's batch size", EXECUTION, minimum=1)


@dataclass
class CompareConfig(Options):
    summaries: tuple[str, ...] = option((), "summary JSON files of validate_2fold runs", EXECUTION, file="read",
                                        positional=True)


@dataclass
class PushConfig(Options):
    folder: str | None = option(None, "a baked model folder (edit_weight output) or a head-shift folder", EXECUTION,
                                folder="existing", positional=True)
    repo_id: str | None = option(None, "hub repository, e.g. your-name/honest_llama2_chat_7B", EXECUTION)
    private: bool = option(False, "create the repository as private", EXECUTION)
    dry_run: bool = option(False, "print the files and the model card; no network", EXECUTION)

    def _check(self) -> None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        super()._check()
        if self.repo_id is None:
            raise UsageError("--repo_id is needed: the hub repository to push to, e.g. your-name/honest_llama2_chat_7B")
        try:
            validate_repo_id(self.repo_id)
        except HFValidationError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"--repo_id {self.repo_id} is not a valid repository id ({first}); "
                             "use owner/name") from None

