"""Any lm-evaluation-harness task for a head shift: a model and the same model shifted both run an lm-eval task list,
and per task and metric the shifted run's per-item scores are paired with the unshifted run's by document id; the
table gives both means and their paired difference, shifted − unshifted, with its 95% bootstrap interval over the
items (iti.statistics, as compare_runs pairs our runs).

The shift is a head-shift folder, turned into lm-eval's steer file (iti.lm_eval_steer: W_o·δ added to each edited
layer's o_proj output, which equals the baked model), or a steer file as it is. One model load serves both runs:
lm-eval's `hf` model and its `steered` model wrap the same loaded model, and the steered one hooks it only while it
runs. A metric pairs when lm-eval scores every item by a number and reports their mean (accuracies, MC2-style
masses); a metric it aggregates otherwise (corpus BLEU or F1, perplexity) has no per-item difference, and the table
says which and why.

Options at import are standard library only (the CLI answers --help before torch and lm-eval load).
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iti.config import AppliedShiftOptions
from iti.constants import RESULTS_DIR
from iti.errors import UsageError
from iti.options import EXECUTION, NUMBERS, check_plain_name, option

if TYPE_CHECKING:
    from iti.statistics import Interval

LM_EVAL_DIR = RESULTS_DIR / "results_dump" / "lm_eval_dump"
TABLE_JSON = "differences.json"
TABLE_CSV = "differences.csv"
SAMPLE_FILES = {"unshifted": "samples_unshifted.jsonl", "shifted": "samples_shifted.jsonl"}
# What a comparison folder holds (the steer file only when made from a head-shift folder): all --overwrite replaces.
OWN_FILES = r"differences\.(json|csv)|samples_(unshifted|shifted)\.jsonl|steer\.pt"
COLUMNS = ["task", "metric", "filter", "items", "unshifted", "shifted", "difference", "low", "high"]
STEER_SUFFIXES = (".pt", ".pth")  # the torch files lm-eval's steered model reads
INSTALL = 'install it with pip install -e ".[lm-eval]"'
MAKE_STEER_FILE = "write one with validation/export_head_shifts.py --format lm_eval"
# The mean of the items' scores against lm-eval's own aggregate: a mean summed in another order differs in the last
# bits only; anything more is another aggregation.
MEAN_TOLERANCE = 1e-9


@dataclass
class LmEvalCompareConfig(AppliedShiftOptions):
    steer_file: str | None = option(None, "an lm-eval steer file (.pt), e.g. the steer.pt of export_head_shifts.py "
                                          "--format lm_eval, instead of --head_shifts", NUMBERS, file="read")
    tasks: tuple[str, ...] = option((), "lm-eval tasks or groups (names as `lm_eval ls tasks` lists them, and those "
                                        "of --include_path)", NUMBERS)
    include_path: tuple[str, ...] = option((), "folders of lm-eval task YAMLs of your own (validation/lm_eval_tasks: "
                                                "TruthfulQA from the local copy)", NUMBERS, folder="existing")
    limit: int | None = option(None, "only the first N items of each task", NUMBERS, minimum=1)
    num_fewshot: int | None = option(None, "few-shot examples per prompt (default: each task's own)", NUMBERS,
                                     minimum=0)
    batch_size: int = option(16, "requests per forward pass", EXECUTION, minimum=1)
    output_dir: str = option(str(LM_EVAL_DIR), "where the comparison's folder goes (named from the inputs)", EXECUTION,
                             folder="write")
    overwrite: bool = option(False, "make this comparison again, replacing its folder (only ever a folder this "
                                    "command wrote)", EXECUTION)

    def _check(self) -> None:
        super()._check()
        if (self.head_shifts is None) == (self.steer_file is None):
            raise UsageError("give exactly one of --head_shifts FOLDER or --steer_file FILE.pt: the shift to compare "
                             "with the unshifted model")
        if self.steer_file is not None and not self.steer_file.endswith(STEER_SUFFIXES):
            raise UsageError(f"--steer_file {self.steer_file} is no .pt or .pth file, the only steer files lm-eval "
                             f"reads as vectors; {MAKE_STEER_FILE}")
        if not self.tasks:
            raise UsageError("--tasks is needed: the lm-eval tasks to run, e.g. --tasks arc_easy hellaswag")
        for task in self.tasks:
            check_plain_name("--tasks", task)


@dataclass(frozen=True)
class Shift:
    """What the shifted run applies, as the comparison names and records it: a label for the folder name, the file or
    folder given, and the SHA-256 of each of its files."""
    label: str
    source: str
    sha256: dict[str, str]


@dataclass(frozen=True)
class PairedMetric:
    """One task's metric (under one of its filters) in both runs: the items paired, both means, the difference."""
    task: str
    metric: str
    filter: str
    items: int
    unshifted: float
    shifted: float
    difference: Interval

    def row(self) -> dict[str, Any]:
        """The table's columns (COLUMNS)."""
        return {"task": self.task, "metric": self.metric, "filter": self.filter, "items": self.items,
                "unshifted": self.unshifted, "shifted": self.shifted, "difference": self.difference.value,
                "low": self.difference.low, "high": self.difference.high}


def shift_of(cfg: LmEvalCompareConfig) -> Shift:
    from iti.files import sha256_of
    from iti.head_shifts import METADATA_FILE, TENSORS_FILE

    if cfg.steer_file is not None:
        path = Path(cfg.steer_file)
        return Shift(path.stem, str(path), {path.name: sha256_of(path)})
    folder = Path(cfg.head_shifts)
    return Shift(folder.name, str(folder), {name: sha256_of(folder / name) for name in (METADATA_FILE, TENSORS_FILE)})


def comparison_folder(cfg: LmEvalCompareConfig, source: str, shift: Shift) -> Path:
    """`{model}_{shift}_{tasks}[_limit_N]_{hash}` under --output_dir: the readable inputs, then a hash of everything
    that changes a number (the model as resolved, its dtype, the shift's files, the tasks and their settings)."""
    import importlib.metadata

    from iti.identity import short_digest

    identity = {"model_source": source, "dtype": cfg.dtype, "shift_sha256": shift.sha256, "tasks": list(cfg.tasks),
                "include_path": [str(Path(folder).resolve()) for folder in cfg.include_path],
                "limit": cfg.limit, "num_fewshot": cfg.num_fewshot,
                "lm_eval": importlib.metadata.version("lm_eval")}
    tasks = "-".join(cfg.tasks)
    if len(tasks) > 60:
        tasks = f"{cfg.tasks[0]}+{len(cfg.tasks) - 1}"
    limit = "" if cfg.limit is None else f"_limit_{cfg.limit}"
    label = re.sub(r"[^\w.+-]", "_", shift.label)
    return Path(cfg.output_dir) / f"{cfg.output_name}_{label}_{tasks}{limit}_{short_digest(identity)}"


def check_new_folder(folder: Path, overwrite: bool) -> None:
    """A comparison made before is replaced only with --overwrite, and only when its folder holds what this command
    writes."""
    from iti.files import check_output_folder, check_replaceable

    check_output_folder(folder, "comparison folder")
    if folder.exists() and not overwrite:
        raise UsageError(f"{folder} exists: this comparison was made before; it is kept (add --overwrite to make it "
                         "again)")
    check_replaceable("--output_dir", folder, overwrite, OWN_FILES, "a comparison's files")


def unshifted_source(cfg: LmEvalCompareConfig, shifts) -> str:
    """--model_path or --model_name's model; for head shifts without --model_path, the model they record."""
    from iti.models import resolve_model_source
    from iti.pyvene_export import model_source

    if shifts is None:
        return resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path)
    source = model_source(cfg, shifts)
    shifts.check_model(source, cfg.allow_other_model)
    return source


def task_manager(cfg: LmEvalCompareConfig):
    """lm-eval's index of the tasks: --include_path's alone when it holds every task named (lm-eval's own several
    thousand take seconds to index), else with lm-eval's own; a name neither knows is a UsageError."""
    from lm_eval.tasks import TaskManager

    folders = list(cfg.include_path) or None
    if folders:
        local = TaskManager(include_path=folders, include_defaults=False)
        if set(cfg.tasks) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=folders)
    unknown = [task for task in cfg.tasks if task not in manager.all_tasks]
    if unknown:
        where = "lm-eval's tasks" + (f" or those in {', '.join(folders)}" if folders else "")
        raise UsageError(f"--tasks {unknown[0]} is not among {where}; list them with `lm_eval ls tasks`, or give the "
                         "folder of its YAML with --include_path")
    return manager


def evaluated(lm, cfg: LmEvalCompareConfig, manager) -> dict:
    """lm-eval's results of one model on the task list, with every item's sample (no bootstrap of its own: the
    intervals here are paired)."""
    from lm_eval import simple_evaluate

    return simple_evaluate(lm, tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                           task_manager=manager, log_samples=True, bootstrap_iters=0)


def check_steer_file(path: Path, model_config) -> None:
    """The steer file read as tensors only (torch's weights-only loader: a file holding other pickled objects, which
    lm-eval's own loader would run, is refused), each entry a vector added to or clamped on a module the model has,
    as wide as that module's output: what lm-eval would otherwise find only at the first forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        steer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # whatever the loader stops at: no zip, no pickle, an object that is no tensor
        raise UsageError(f"--steer_file {path} is not a steer file of tensors ({type(err).__name__}); "
                         f"{MAKE_STEER_FILE}") from None
    with torch.device("meta"):  # the modules' names and widths, not their weights
        modules = dict(AutoModelForCausalLM.from_config(model_config).base_model.named_modules())
    if not isinstance(steer, dict) or not steer:
        raise UsageError(f"--steer_file {path} maps no hookpoint to a steering vector; {MAKE_STEER_FILE}")
    for hookpoint, entry in steer.items():
        vector = entry.get("steering_vector") if isinstance(entry, dict) else None
        if not isinstance(vector, torch.Tensor) or entry.get("action") not in ("add", "clamp"):
            raise UsageError(f"--steer_file {path}: {hookpoint} holds no steering_vector tensor with action add or "
                             f"clamp, as lm-eval's steered model reads them; {MAKE_STEER_FILE}")
        if hookpoint not in modules:
            raise UsageError(f"--steer_file {path} steers {hookpoint}, which is no module of this "
                             f"{model_config.model_type} model (hookpoints are module names of model.base_model, e.g. "
                             f"layers.0.self_attn.o_proj); write it for this model: {MAKE_STEER_FILE}")
        width = getattr(modules[hookpoint], "out_features", None)
        if width is not None and vector.shape[-1] != width:
            raise UsageError(f"--steer_file {path}: the vector for {hookpoint} has {vector.shape[-1]} values, the "
                             f"module's output {width}; write it for this model: {MAKE_STEER_FILE}")


def item_scores(samples: list[dict]) -> tuple[dict[tuple[str, str], dict[int, float]], set[tuple[str, str]]]:
    """Per (metric, filter) of one task's samples, each item's score by document id; and the (metric, filter)
    pairs some item scored by something other than a number (a corpus metric's per-item inputs)."""
    scores: dict[tuple[str, str], dict[int, float]] = {}
    not_numbers = set()
    for sample in samples:
        for metric in sample["metrics"]:
            key, value = (metric, sample["filter"]), sample[metric]
            if isinstance(value, numbers.Real):
                scores.setdefault(key, {})[sample["doc_id"]] = float(value)
            else:
                not_numbers.add(key)
    return {key: values for key, values in scores.items() if key not in not_numbers}, not_numbers


def paired_metrics(unshifted: dict, shifted: dict) -> tuple[list[PairedMetric], list[str]]:
    """Per task and metric the two runs share, the paired difference over the items; and one line per metric
    that has none, saying why."""
    import numpy as np

    from iti.statistics import paired_differences

    table, notes = [], []
    for task in sorted(unshifted["samples"]):
        base_scores, base_other = item_scores(unshifted["samples"][task])
        shifted_scores, shifted_other = item_scores(shifted["samples"].get(task, []))
        for metric, filter_name in sorted(base_other | shifted_other):
            notes.append(f"{task} {metric} ({filter_name}): lm-eval scores its items by no number (a corpus metric)")
        for key in sorted(base_scores.keys() & shifted_scores.keys()):
            metric, filter_name = key
            base, treated = base_scores[key], shifted_scores[key]
            if base.keys() != treated.keys():
                raise UsageError(f"lm-eval scored other items of {task} in the two runs ({len(base)} against "
                                 f"{len(treated)}); its documents differ from one loading to the next, so the runs "
                                 "cannot be paired")
            ids = sorted(base)
            base_values, treated_values = np.array([base[i] for i in ids]), np.array([treated[i] for i in ids])
            aggregates = [run["results"][task].get(f"{metric},{filter_name}") for run in (unshifted, shifted)]
            if not all(_is_mean(values, aggregate) for values, aggregate in
                       zip((base_values, treated_values), aggregates)):
                notes.append(f"{task} {metric} ({filter_name}): lm-eval reports no mean of its items' scores "
                             f"({aggregates[0]!r} unshifted), so it has no per-item difference")
                continue
            difference = paired_differences({"score": treated_values}, {"score": base_values})["score"]
            table.append(PairedMetric(task, metric, filter_name, len(ids), float(base_values.mean()),
                                      float(treated_values.mean()), difference))
    return table, notes


def _is_mean(values, aggregate) -> bool:
    return isinstance(aggregate, numbers.Real) and math.isclose(float(values.mean()), float(aggregate),
                                                                rel_tol=MEAN_TOLERANCE, abs_tol=MEAN_TOLERANCE)


def table_text(table: list[PairedMetric]) -> str:
    """The comparison as people read it: one row per task and metric, the difference with its interval."""
    header = ["task", "metric", "filter", "items", "unshifted", "shifted", "shifted − unshifted [95% interval]", ""]
    rows = [[m.task, m.metric, m.filter, str(m.items), f"{m.unshifted:.4f}", f"{m.shifted:.4f}",
             f"{m.difference.value:+.4f} [{m.difference.low:+.4f}, {m.difference.high:+.4f}]",
             "excludes 0" if m.difference.excludes_zero() else ""] for m in table]
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
                     for cells in [header, *rows])


def samples_text(results: dict) -> str:
    """Every item lm-eval scored, one JSON line each with its task, as lm-eval logs samples."""
    from lm_eval.utils import handle_non_serializable

    return "".join(json.dumps({"task": task, **sample}, default=handle_non_serializable, ensure_ascii=False) + "\n"
                   for task, samples in sorted(results["samples"].items()) for sample in samples)


def provenance(cfg: LmEvalCompareConfig, source: str, shift: Shift, model) -> dict:
    import importlib.metadata

    from iti.provenance import run_provenance

    record = run_provenance(dataclasses.asdict(cfg), {}, source, str(model.device))
    del record["features_sha256"]
    record["versions"]["lm_eval"] = importlib.metadata.version("lm_eval")
    return {**record, "shift": shift.source, "shift_sha256": shift.sha256, "model_dtype": str(model.dtype)}


def compare(cfg: LmEvalCompareConfig) -> tuple[Path, list[PairedMetric], list[str]]:
    """Run lm-eval on the unshifted and the shifted model and write the paired table into the comparison's folder:
    (folder, table, notes on the metrics without a difference)."""
    import pandas as pd

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UsageError(f"lm-evaluation-harness is not installed; {INSTALL}") from None
    from lm_eval.models.hf_steered import SteeredModel
    from lm_eval.models.huggingface import HFLM

    from iti.files import output_lock, staged_folder, write_csv, write_json, write_text
    from iti.head_shifts import HeadShifts
    from iti.lm_eval_steer import STEER_FILE, write_steer_file
    from iti.models import gguf_to_folder, load_config, load_model

    shifts = HeadShifts.load(cfg.head_shifts) if cfg.head_shifts is not None else None
    source = unshifted_source(cfg, shifts)
    shift = shift_of(cfg)
    folder = comparison_folder(cfg, source, shift)
    check_new_folder(folder, cfg.overwrite)
    manager = task_manager(cfg)
    model_folder = str(gguf_to_folder(source)) if source.endswith(".gguf") else source
    if shifts is None:
        check_steer_file(Path(cfg.steer_file), load_config(model_folder, cfg.trust_remote_code))
    with output_lock(folder, "comparison folder"), staged_folder(folder, replace=cfg.overwrite) as staging:
        model, tokenizer = load_model(model_folder, cfg.device, cfg.dtype, cfg.trust_remote_code)
        steer_path = Path(cfg.steer_file) if shifts is None else write_steer_file(shifts, model, staging / STEER_FILE)
        runs = {"unshifted": HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size),
                "shifted": SteeredModel(pretrained=model, tokenizer=tokenizer, steer_path=str(steer_path),
                                        batch_size=cfg.batch_size)}
        runs = {run: evaluated(lm, cfg, manager) for run, lm in runs.items()}
        table, notes = paired_metrics(runs["unshifted"], runs["shifted"])
        for run, name in SAMPLE_FILES.items():
            write_text(staging / name, samples_text(runs[run]))
        write_json(staging / TABLE_JSON, {
            "provenance": provenance(cfg, source, shift, model), "table": [m.row() for m in table],
            "not_paired": notes, "lm_eval_results": {run: results["results"] for run, results in runs.items()}})
        write_csv(staging / TABLE_CSV, pd.DataFrame([m.row() for m in table], columns=COLUMNS))
    return folder, table, notes
