"""Every script's options, defaults and help, written once: the command lines are generated from these
dataclasses (iti.cli.parse_config) and the code reads the same objects.

Each field declares its role (iti.identity.Role: changes the numbers, changes them only through the head
shifts, or only changes how the work runs), whether readable file names spell it out (`named`), whether it
decides the folds' questions (`split`), and what `check()` verifies without data: a `minimum`, `choices`,
a folder to read or to write. Run names, hashes, grouping and resume all derive from these roles.

Standard library only at import, so that `--help` and a bad flag are answered before torch is imported.
A path option's default is the project's own folder (absolute); a path the user gives means what it
means to the shell (relative to the current directory).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from iti.constants import (
    BUNDLED_MODEL,
    DEFAULT_INFO_JUDGE,
    DEFAULT_TRUTH_JUDGE,
    DTYPES,
    FEATURES_DIR,
    HEAD_METRICS,
    OWT_SAMPLES,
    PLOTS_DIR,
    PROBE_BACKENDS,
    PROMPT_FORMATS,
    RESULTS_DIR,
    SIGMA_QUESTIONS,
    SPLIT_RNGS,
)
from iti.errors import UsageError
from iti.identity import Role
from iti.metrics import BY_NAME, METRIC_OPTIONS, PER_QUESTION_OR_DERIVED
from iti.registry import (
    DATASET_NAMES,
    PROBING_DATASETS,
    VALIDATION_DATASETS,
    check_dataset_name,
    is_known_model,
    known_model_names,
)

NUMBERS, SHIFTS, EXECUTION = Role.NUMBERS, Role.SHIFTS, Role.EXECUTION
METRICS = METRIC_OPTIONS
DATASET_PATH_HELP = ("a contrastive dataset of your own (ITI_SPEC.md §9): .jsonl, .csv in TruthfulQA.csv's columns, "
                     "or hub:owner/name[:split]; --dataset_name then names its features and outputs")
# --select_metric choices: the metrics scored per question or derived from them.
SELECT_METRIC_NAMES = {name.lower(): name for name in PER_QUESTION_OR_DERIVED}
SELECT_METRICS = tuple(SELECT_METRIC_NAMES)
# Names that become parts of file names: a letter or digit, then letters, digits, _ . + -; never a path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][\w.+-]*")
# The tag of a `--limit` subset in feature file names: no dataset name may end with it.
LIMIT_TAG = re.compile(r"(^|_)limit_\d+$")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?|\d+")


def option(default, help: str, role: Role, *, named: bool = False, split: bool = False, location: bool = False,
           minimum: float | None = None, folder: str | None = None, **cli):
    """A dataclass field with its help and role; `cli` may hold `aliases` and `choices`; `folder` is "read"
    (must be a folder if it exists) or "write" (a folder, or a path where one can be made, that can be written);
    `location`: a path or source whose content, resolved when the work runs, is what enters an identity."""
    metadata = {"help": help, "role": role, "named": named, "split": split, "location": location,
                "minimum": minimum, "folder": folder, **cli}
    return field(default=default, metadata=metadata)


class Options:
    """What every options dataclass checks from its field metadata, before any data is read. `check()`
    runs the checks once per object (the script's parser and the run both ask)."""

    def check(self) -> None:
        if not getattr(self, "_checked", False):
            self._check()
            self._checked = True

    def _check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for item in _values(value):
                if item is None:
                    continue
                if "choices" in f.metadata and item not in f.metadata["choices"]:
                    raise UsageError(f"--{f.name} {item} is not one of {', '.join(map(str, f.metadata['choices']))}")
                if f.metadata.get("minimum") is not None and not item >= f.metadata["minimum"]:
                    raise UsageError(f"--{f.name} {item} must be at least {f.metadata['minimum']:g}")
            if f.metadata.get("folder") and value is not None:
                check_folder(f"--{f.name}", value, f.metadata["folder"] == "write")


@dataclass
class ModelOptions(Options):
    model_name: str = option(BUNDLED_MODEL, "registry name; with --model_path it only names outputs", NUMBERS,
                             named=True)
    model_prefix: str = option("", "prefix added to --model_name, e.g. local_ or honest_", NUMBERS, named=True)
    model_path: str | None = option(None, "hub id, local model folder or .gguf file (overrides the registry)", NUMBERS,
                                    location=True)
    device: str = option("auto", "auto (all GPUs, else CPU), cpu, cuda, cuda:N or a GPU index", EXECUTION)
    dtype: str = option("auto", "auto: float32 on CPU, the checkpoint's half precision on GPU", NUMBERS,
                        choices=DTYPES)
    trust_remote_code: bool = option(False, "allow the model's own code from the hub", EXECUTION)

    @property
    def output_name(self) -> str:
        """The name outputs carry: `{model_prefix}{model_name}`."""
        return f"{self.model_prefix}{self.model_name}"

    def _check(self) -> None:
        super()._check()
        check_plain_name("--model_name", self.model_name)
        if self.model_prefix and not re.fullmatch(r"[\w.+-]+", self.model_prefix):
            raise UsageError(f"--model_prefix {self.model_prefix!r} must be letters, digits, _ . + - (e.g. local_)")
        if self.model_path is None and not is_known_model(self.output_name):
            raise UsageError(f"unknown model name {self.output_name!r}; known names: {', '.join(known_model_names())}; "
                             "or give --model_path (hub id, local folder or .gguf file)")
        if not DEVICE.fullmatch(str(self.device)):
            raise UsageError(f"--device {self.device} is not a device; use auto, cpu, cuda, cuda:N or a GPU index N")


@dataclass
class DatasetOptions(ModelOptions):
    """Where the items come from (a built-in set, or a §9 file named by --dataset_name) and how they are prompted."""
    dataset_path: str | None = option(None, DATASET_PATH_HELP, NUMBERS, split=True, location=True)
    prompt_format: str = option("raw", "raw (`Q: {question} A: {answer}`, the public workflow) or chat (the model's "
                                       "chat template: question as the user turn, answer as the assistant turn)",
                                NUMBERS, choices=PROMPT_FORMATS)

    @property
    def custom(self) -> bool:
        return self.dataset_path is not None

    def check_custom_dataset(self, dataset_name: str, min_items: int = 1, limit: int | None = None) -> None:
        """A §9 file is read in full here (it is small and needs no heavy import), so bad items fail at once."""
        check_custom_dataset(self.dataset_path, dataset_name, min_items, limit)


@dataclass
class ActivationsConfig(DatasetOptions):
    dataset_name: str = option("tqa_mc2", "tqa_mc2, tqa_gen, tqa_gen_end_q, nq_open or trivia_qa; with "
                                          "--dataset_path, the name of your dataset", NUMBERS, named=True)
    batch_size: int = option(16, "prompts per forward pass", EXECUTION, minimum=1)
    limit: int | None = option(None, "only the first N questions of the set's order", NUMBERS, named=True, minimum=1)
    seed: int = option(42, "draws the extra question of tqa_gen_end_q", NUMBERS, minimum=0)
    features_dir: str = option(str(FEATURES_DIR), "where the features go", EXECUTION, folder="write")
    tqa_path: str | None = option(None, "local TruthfulQA folder (default: ./TruthfulQA, else the hub)", NUMBERS,
                                  folder="read")
    mlp: bool = option(False, "also save each MLP's output (_mlp_wise.npy)", NUMBERS)
    overwrite: bool = option(False, "replace features of this name that were made differently (another model, "
                                    "dataset file, prompt format, limit or dtype); without it they are kept and "
                                    "the run refuses", EXECUTION)

    def _check(self) -> None:
        super()._check()
        if self.custom:
            self.check_custom_dataset(self.dataset_name, limit=self.limit)
        else:
            check_dataset_name(self.dataset_name)


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
                              split=True)
    use_center_of_mass: bool = option(False, "direction = mean of true rows minus mean of false rows (the paper's "
                                             "best)", SHIFTS, named=True)
    use_random_dir: bool = option(False, "K heads drawn at random and random directions (a control)", SHIFTS,
                                  named=True)
    seed: int = option(42, "seeds the train/validation split and every random choice", NUMBERS, named=True,
                       split=True, minimum=0)
    limit: int | None = option(None, "only the first N questions", NUMBERS, named=True, split=True, minimum=1)
    features_dir: str = option(str(FEATURES_DIR), "where get_activations put the features", SHIFTS, location=True,
                               folder="read")
    probe_backend: str = option("torch", "torch (all probes at once, same optimum) or sklearn (one per head, as "
                                         "the public workflow)", SHIFTS, choices=PROBE_BACKENDS)
    tqa_path: str | None = option(None, "local TruthfulQA folder (default: ./TruthfulQA, else the hub)", NUMBERS,
                                  split=True, location=True, folder="read")

    @property
    def method(self) -> str:
        if self.use_random_dir:
            return "random"
        return "center_of_mass" if self.use_center_of_mass else "probe"

    @property
    def minimum_items(self) -> int:
        """Items the questions are split into: training and validation."""
        return 2

    @property
    def tuning_dataset(self) -> str:
        """The features σ is measured on (spec §4; §9: a custom probing set is its own σ set)."""
        if self.activations_dataset is not None:
            return self.activations_dataset
        return self.dataset_name if self.custom else VALIDATION_DATASETS[1]

    def _check(self) -> None:
        super()._check()
        if self.use_center_of_mass and self.use_random_dir:
            raise UsageError("--use_center_of_mass and --use_random_dir exclude each other; pick one "
                             "(or neither for probe directions)")
        if self.custom:
            self.check_custom_dataset(self.dataset_name, min_items=self.minimum_items, limit=self.limit)
        elif self.dataset_name not in PROBING_DATASETS:
            raise UsageError(f"--dataset_name {self.dataset_name} cannot train probes on TruthfulQA folds; "
                             f"use one of {', '.join(PROBING_DATASETS)}")
        for alpha in _values(self.alpha):
            if not math.isfinite(alpha):
                raise UsageError(f"--alpha {alpha} must be a finite number, e.g. 15")
        _check_fraction("--val_ratio", self.val_ratio)


@dataclass
class ValidationConfig(HeadShiftOptions):
    num_heads: tuple[int, ...] = option((48,), "K, heads to shift; 0 evaluates the model as it is. Several values "
                                               "(with --alpha): each fold picks one setting on its validation "
                                               "questions (--select_metric)", SHIFTS, named=True, minimum=0)
    alpha: tuple[float, ...] = option((15.0,), "α, the shift strength; 0 evaluates the model as it is; several "
                                               "values: see --num_heads", SHIFTS, named=True)
    select_metric: str = option("mc2", "with several K or α: the validation score each fold maximises "
                                       "(true*info needs --metrics judge info)", SHIFTS, choices=SELECT_METRICS)
    max_kl: float | None = option(None, "with several K or α: only settings whose KL wrt the original model stays "
                                        "within this budget may be chosen (needs kl in --metrics)", SHIFTS, minimum=0)
    select_ratio: float = option(0.2, "with several K or α: share of each fold's development questions set aside to "
                                      "score the settings; the shifts scored are built from the others", SHIFTS,
                                 split=True)
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
                                        "with a \"text\" field; default: the hub", NUMBERS, location=True)
    batch_size: int = option(16, "sequences per forward pass", EXECUTION, minimum=1)
    max_new_tokens: int = option(50, "longest generated answer, in tokens", NUMBERS, minimum=1)
    results_dir: str = option(str(RESULTS_DIR), "where splits/ and results_dump/ go", EXECUTION, folder="write")
    split_rng: str = option("default", "generator of the folds' train/validation draws: default (one seeded numpy "
                                       "Generator) or public (the public validate_2fold's global NumPy stream, to "
                                       "compare with a published seed question for question)", SHIFTS, split=True,
                            choices=SPLIT_RNGS)
    owt_samples: int = option(OWT_SAMPLES, f"documents drawn for CE and KL (spec: {OWT_SAMPLES}); fewer is faster "
                                           "and noisier", NUMBERS, minimum=1)
    resume: bool = option(False, "require an earlier run of these settings and keep the folds it finished (they are "
                                 "kept without this flag too, whatever batch size, device or loading it used; the "
                                 "flag makes a missing run an error)", EXECUTION)

    def __post_init__(self) -> None:
        # One value may be given as a plain number in Python; the command line always gives tuples.
        self.num_heads = tuple(int(k) for k in _values(self.num_heads))
        self.alpha = tuple(float(a) for a in _values(self.alpha))

    @property
    def settings(self) -> list[tuple[int, float]]:
        """Every (K, α) to try, K outer."""
        return [(k, alpha) for k in self.num_heads for alpha in self.alpha]

    @property
    def minimum_items(self) -> int:
        return max(2, self.num_fold)

    @property
    def selects(self) -> bool:
        """Several settings: each fold chooses one on its validation questions."""
        return len(self.settings) > 1

    @property
    def intervenes(self) -> bool:
        return any(k > 0 and alpha != 0 for k, alpha in self.settings)

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
        if self.max_kl is not None and "kl" not in self.metrics:
            raise UsageError(f"--max_kl {self.max_kl:g} needs KL: add kl to --metrics")
        if self.sigma_questions == "dev" and not self.custom and self.tuning_dataset not in PROBING_DATASETS:
            raise UsageError(f"--sigma_questions dev needs a TruthfulQA tuning set (one of "
                             f"{', '.join(PROBING_DATASETS)}), not {self.tuning_dataset}")
        if self.limit is not None and self.limit < self.num_fold:
            raise UsageError(f"--limit {self.limit} leaves fewer questions than the {self.num_fold} folds; "
                             f"use --limit {self.num_fold} or more")
        _check_fraction("--select_ratio", self.select_ratio)
        if self.split_rng == "public" and self.use_random_dir:
            raise UsageError("--split_rng public cannot follow the public stream with --use_random_dir (the public "
                             "script draws its random heads and directions from the same stream); drop one of them")
        if self.owt_path is not None and not Path(self.owt_path).expanduser().is_file():
            raise UsageError(f"--owt_path {self.owt_path} is not a file; give a .txt or .jsonl file of documents "
                             "(validation/write_local_text.py writes a stand-in)")


@dataclass
class CollectConfig(ValidationConfig):
    """collect_sweep's options. Every validate_2fold flag is accepted, so a sweep passes its own on; those that
    name runs select them (model, prefix, method, dataset, limit, and the seed when given), and runs that
    differ in the others make rows of their own."""
    seed: int | None = option(None, "only runs of this seed (default: every seed)", NUMBERS, named=True, minimum=0)
    by_category: bool = option(False, "also each category's difference from the baseline (table and one plot per "
                                      "setting)", EXECUTION)
    category_metric: str = option("MC2", "the metric of the per-category table and plots", EXECUTION,
                                  choices=PER_QUESTION_OR_DERIVED)


@dataclass
class EditConfig(HeadShiftOptions):
    output_dir: str | None = option(None, "default: validation/results_dump/edited_models_dump/"
                                          "{model}_seed_{seed}_top_{K}_heads_alpha_{alpha}", EXECUTION)
    overwrite: bool = option(False, "replace --output_dir when it holds an earlier bake (a folder of anything "
                                    "else is never touched)", EXECUTION)

    def _check(self) -> None:
        super()._check()
        if self.limit is not None and self.limit < 2:
            raise UsageError(f"--limit {self.limit} must be at least 2: the questions are split into training "
                             "and validation")


@dataclass
class HeadAccuracyConfig(Options):
    model_name: str = option(BUNDLED_MODEL, "names the features to read", NUMBERS, named=True)
    dataset_name: str = option("tqa_mc2", "features that train the probes", NUMBERS, named=True)
    dataset_path: str | None = option(None, DATASET_PATH_HELP + " (checked against the features' record)", NUMBERS)
    tqa_path: str | None = option(None, "local TruthfulQA folder the features were made from (default: "
                                        "./TruthfulQA, else the hub; checked against the features' record)", NUMBERS,
                                  folder="read")
    metric: str = option("accuracy", "what the heatmap shows: the probes' validation accuracy or ROC AUC", NUMBERS,
                         choices=HEAD_METRICS)
    features_dir: str = option(str(FEATURES_DIR), "where get_activations put the features", NUMBERS, folder="read")
    limit: int | None = option(None, "only the first N questions (the `_limit_N` features, else the first N of "
                                     "the full set)", NUMBERS, named=True, minimum=2)
    val_ratio: float = option(0.2, "share of the questions held out to score the probes", NUMBERS)
    seed: int = option(42, "seeds the train/validation split", NUMBERS, minimum=0)
    probe_backend: str = option("torch", "torch (all probes at once) or sklearn (one per head)", NUMBERS,
                                choices=PROBE_BACKENDS)
    output_dir: str = option(str(PLOTS_DIR), "where the accuracies and the heatmap go", EXECUTION, folder="write")

    def _check(self) -> None:
        super()._check()
        check_plain_name("--model_name", self.model_name)
        _check_fraction("--val_ratio", self.val_ratio)
        if self.dataset_path is not None:
            check_custom_dataset(self.dataset_path, self.dataset_name)
        else:
                check_dataset_name(self.dataset_name)


@dataclass
class ExportConfig(ModelOptions):
    head_shifts: str | None = option(None, "head shifts to export: a folder from validate_2fold "
                                           "(results_dump/head_shifts_dump/...) or edit_weight", NUMBERS)
    import_from: str | None = option(None, "a pyvene folder (IntervenableModel.save) to import as head shifts "
                                           "instead", NUMBERS)
    output_dir: str | None = option(None, "where the pyvene folder (export) or the head shifts (import) go", EXECUTION)
    allow_other_model: bool = option(False, "apply head shifts made for another model of the same geometry", EXECUTION)

    def _check(self) -> None:
        super()._check()
        if (self.head_shifts is None) == (self.import_from is None):
            raise UsageError("give exactly one of --head_shifts FOLDER (export to pyvene) or --import_from FOLDER "
                             "(import from pyvene)")
        if self.output_dir is None:
            raise UsageError("--output_dir is needed: the folder to write")


def check_plain_name(flag: str, name: str) -> None:
    """Names that become parts of file names must stay inside their folder: no `/`, no `..`, no spaces."""
    if not PLAIN_NAME.fullmatch(name):
        raise UsageError(f"{flag} {name!r} becomes part of file names: use letters, digits and _ . + - only, "
                         "starting with a letter or digit (no / or ..)")


def check_folder(flag: str, path: str, write: bool) -> None:
    """A folder option: an existing file is refused; a folder to write must be writable, or creatable where its
    nearest existing parent is writable (probed with a temporary file, removed at once: nothing is left)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder; give a folder")
    if not write:
        return
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so no folder can be made there; give another path")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".iti-write-probe.")
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {existing} ({err.strerror}); give a folder you can "
                         "write to") from None
    os.close(handle)
    os.unlink(probe)


def check_custom_dataset(dataset_path: str, dataset_name: str, min_items: int = 1, limit: int | None = None) -> None:
    """--dataset_name must be a plain new name, and the file a §9 dataset with enough items (hub sets load later)."""
    from iti.contrastive import HUB_PREFIX, load_dataset_file

    check_plain_name("--dataset_name", dataset_name)
    if dataset_name in DATASET_NAMES:
        raise UsageError(f"--dataset_name {dataset_name!r} names your dataset's files: use a new name, not one of "
                         f"the built-in {', '.join(DATASET_NAMES)}")
    if LIMIT_TAG.search(dataset_name):
        raise UsageError(f"--dataset_name {dataset_name!r} ends like the `_limit_N` tag of a subset's files; "
                         "choose a name that does not end in limit_<number>")
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


def _check_fraction(flag: str, value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"{flag} {value} must lie strictly between 0 and 1, e.g. 0.2")
