"""A validate_2fold run's identity, its files and its record: its name, where each file goes, the record it
writes (RunRecord: the dataclass is the JSON's schema, iti.records), which finished folds an earlier run of the
same identity left, and finding complete runs for sweeps.

Layout under `results_dir` (the public workflow's, with the identity hash added):
- `splits/fold_{i}_{train|val|test|select}[_{dataset}]_seed_{seed}[_limit_{N}]_{split hash}.csv`;
- `results_dump/head_shifts_dump/{name}_fold_{i}{method}/`: the fold's HeadShifts;
- `results_dump/answer_dump/{name}_fold_{i}{method}.csv`: per test question the answer and every score;
- `results_dump/summary_dump/{name}_fold_{i}{method}.csv` and `{name}{method}.json` (the record);
- `results_dump/probe_report/{name}_fold_{i}{method}_{heads|layers}.csv`;
Each fold's entry records the SHA-256 of every file it wrote (FoldFiles.sha256); readers and --resume check them
before use, so a changed file is refused, never read or kept. Records of versions before that lack them, and their
files are read unverified.

where name = `{model}[_{dataset}]_seed_{seed}_top_{K}_heads_alpha_{α}[_limit_{N}]_{hash}` (iti.identity.readable_name),
the hash naming every setting that changes the numbers as resolved (iti.identity), and method `_com`, `_random`
or nothing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iti.config import ValidationConfig
from iti.errors import UsageError
from iti.files import check_sha256, read_json, write_json
from iti.identity import declared, flagged_fields, identity, readable_name, short_digest
from iti.records import read_record, record_json

METHOD_SUFFIX = {"center_of_mass": "_com", "random": "_random", "probe": ""}
REMEDY = "give the files validate_2fold writes to results_dump/summary_dump/"


# ----------------------------------------------------------------------------- the record
# Fields that records of earlier versions (or the tests' hand-written ones) may lack are `T | None = None`;
# validate_2fold always writes them.

@dataclass(kw_only=True)
class Resolved:
    """What the run's options resolved to once the model and data were loaded."""
    model_source: str | None = None
    model_dtype: str | None = None
    model_fingerprint: dict[str, Any] | None = None  # iti.fingerprint's record; identity.model_path is its digest
    judges: dict[str, str] | None = None
    owt_source: str | None = None
    questions: int | None = None
    tqa_source: str | None = None
    tuning_dataset: str | None = None
    prompt: str | None = None
    method: str
    intervenes: bool


@dataclass(kw_only=True)
class Selection:
    """How a fold chose (K, α) among several: every setting's scores on questions set aside, and the choice."""
    scheme: str
    metric: str
    max_kl: float | None
    select_ratio: float
    counts: dict[str, int]
    table: list[dict[str, float | bool | None]]  # per (K, α): its score, KL, CE and whether it is on the front
    chosen: dict[str, float | bool | None]
    note: str | None
    edge_note: str | None
    chosen_test: float | None = None
    # The record of the run whose table this is, when read from a run that differs only in --max_kl (scored_tables)
    scored_in: str | None = None


@dataclass(kw_only=True)
class FoldFiles:
    """The files a fold wrote, and the SHA-256 of each (the head shifts' by the paths of the folder's files)."""
    splits: dict[str, str] | None = None
    head_shifts: str | None = None
    answers: str
    summary: str | None = None
    probe_report_heads: str | None = None
    probe_report_layers: str | None = None
    control_answers: str | None = None  # --control: the control's answers on the test questions
    sha256: dict[str, str] | None = None

    def check(self, path: str, what: str, remedy: str) -> None:
        """UsageError unless the file at `path` holds the bytes this fold wrote there (records without digests,
        of earlier versions, are taken as they are)."""
        if self.sha256 is None:
            return
        if path not in self.sha256:
            raise UsageError(f"{what} {path} is not among the files its fold recorded the digests of; {remedy}")
        check_sha256(path, self.sha256[path], what, remedy)


@dataclass(kw_only=True)
class ControlFold:
    """A fold's --control (iti.control): its own choice among the same settings (a selection run), the setting it
    used, its heads (ITI's, for its K) and its means over the test questions (answers: FoldFiles.control_answers)."""
    method: str
    selection: Selection | None = None
    K: int
    alpha: float
    heads: list[list[int]]
    results: dict[str, float | None]


@dataclass(kw_only=True)
class FoldEntry:
    """One fold: its questions, the setting it used, its means over its test questions and its files."""
    fold: int
    train: list[int] | None = None
    val: list[int] | None = None
    test: list[int]
    K: int | None = None
    alpha: float | None = None
    selection: Selection | None = None
    heads: list[list[int]] | None = None
    results: dict[str, float | None]
    files: FoldFiles
    probe_report: dict[str, Any] | None = None
    control: ControlFold | None = None


@dataclass(kw_only=True)
class Bootstrap:
    intervals: dict[str, dict[str, float | None]]
    level: float
    resamples: int
    seed: int
    over: str


@dataclass(kw_only=True)
class RunRecord:
    """validate_2fold's record of a run (`{name}{method}.json`): written after every fold, complete after the
    last. `config` is the ValidationConfig as given (`dataclasses.asdict`), `identity` what it resolved to."""
    config: dict[str, Any]
    identity: dict[str, Any] | None = None
    name: str | None = None
    resolved: Resolved
    notes: list[str] = field(default_factory=list)
    folds: list[FoldEntry]
    final: dict[str, float | None] | None = None
    final_line: str | None = None
    complete: bool
    provenance: dict[str, Any] | None = None
    seconds: float = 0.0  # what computed its folds; a run of a --sweep: its share of that process's time
    probe_report_table: str | None = None
    bootstrap: Bootstrap | None = None
    categories: dict[str, dict[str, float | None]] | None = None
    tradeoff_figure: str | None = None  # a selection run's folds' scores against KL (iti.plots.tradeoff_figure)
    # What moved the scores: {"length", "truth": {"coef", "low", "high"}, "questions", "answers"} (iti.effect_parts)
    effect_parts: dict[str, Any] | None = None
    # --control: per metric, ITI − control over the test questions (folds pooled) with its paired bootstrap interval
    control: dict[str, dict[str, float]] | None = None
    chance: dict[str, float] | None = None  # MC1, MC2, MC3 of every answer equally likely, on the run's questions
    other: dict[str, Any] = field(default_factory=dict)  # what a later version adds, kept as read


@dataclass(frozen=True)
class RunFile:
    """A run record and the summary file it was read from."""
    path: Path
    record: RunRecord


def read_run(path: str | Path) -> RunRecord:
    """The record of one validate_2fold run; UsageError naming the file and what is wrong with it."""
    what = f"{path} is not a validate_2fold summary JSON"
    record = read_record(RunRecord, read_json(path, "validate_2fold summary", REMEDY), what, REMEDY)
    if record.complete and record.final is None:
        raise UsageError(f"{what}: complete, but final is missing; {REMEDY}")
    return relocated(record, Path(path))


def relocated(record: RunRecord, path: Path) -> RunRecord:
    """The record with each path under the results_dir it was written to moved under the results folder the record
    lies in now (`path` is `<results folder>/results_dump/summary_dump/<name>.json`) where that file is there: a
    results folder copied or moved whole, to another machine or into the repository, finds its own files, and
    summaries copied alone still find theirs where they were written. Digests check the bytes either way."""
    written = record.config.get("results_dir")
    if not isinstance(written, str) or path.parent.parent.name != "results_dump":
        return record
    root = path.parent.parent.parent
    one_path = [one.name for one in dataclasses.fields(FoldFiles) if one.name not in ("splits", "sha256")]

    def moved(recorded: str | None) -> str | None:
        if recorded is None:
            return None
        try:
            here = root / Path(recorded).relative_to(written)
        except ValueError:
            return recorded
        return str(here) if here.exists() else recorded

    def files(entry: FoldFiles) -> FoldFiles:
        return dataclasses.replace(
            entry, **{name: moved(getattr(entry, name)) for name in one_path},
            splits=None if entry.splits is None else {part: moved(p) for part, p in entry.splits.items()},
            sha256=None if entry.sha256 is None else {moved(p): digest for p, digest in entry.sha256.items()})

    def selection(chosen: Selection | None) -> Selection | None:
        return None if chosen is None else dataclasses.replace(chosen, scored_in=moved(chosen.scored_in))

    folds = [dataclasses.replace(
        fold, files=files(fold.files), selection=selection(fold.selection),
        control=None if fold.control is None else dataclasses.replace(fold.control,
                                                                      selection=selection(fold.control.selection)))
        for fold in record.folds]
    return dataclasses.replace(record, folds=folds, tradeoff_figure=moved(record.tradeoff_figure))


# ----------------------------------------------------------------------------- the run's files

@dataclass(frozen=True)
class Run:
    """A run's configuration and resolved identity, and the paths of everything it writes."""
    cfg: ValidationConfig
    identity: dict

    @classmethod
    def resolve(cls, cfg: ValidationConfig, resolved: dict) -> Run:
        return cls(cfg, identity(cfg, resolved))

    @property
    def name(self) -> str:
        return f"{readable_name(self.cfg)}_{short_digest(self.identity)}"

    @property
    def dump(self) -> Path:
        return Path(self.cfg.results_dir) / "results_dump"

    @property
    def summary_path(self) -> Path:
        return self.dump / "summary_dump" / f"{self.name}{METHOD_SUFFIX[self.cfg.method]}.json"

    def split_path(self, fold: int, part: str) -> Path:
        """Named by what decides the folds' questions alone, so runs that share their folds share these files."""
        split_hash = short_digest({name: self.identity[name] for name in flagged_fields(ValidationConfig, "split")})
        named = readable_name(self.cfg, ("dataset_name", "seed", "limit"))
        return Path(self.cfg.results_dir) / "splits" / f"fold_{fold}_{part}{named}_{split_hash}.csv"

    def fold_file(self, fold: int, folder: str, suffix: str = ".csv") -> Path:
        """`results_dump/{folder}/{name}_fold_{i}{method}{suffix}`: a fold's answers, summary, shifts, probe report."""
        return self.dump / folder / f"{self.name}_fold_{fold}{METHOD_SUFFIX[self.cfg.method]}{suffix}"

    def finished_folds(self) -> tuple[dict[int, FoldEntry], float]:
        """The folds an earlier run of this identity completed (its files all present, with the bytes it recorded),
        by index, and the seconds that run took (0 when none is kept). A record at this path of another identity (a
        hash collision, or not ours) is never overwritten, and neither is a file of a fold that changed since."""
        if not self.summary_path.exists():
            if self.cfg.resume:
                raise UsageError(f"--resume: no earlier run of these settings at {self.summary_path}; drop --resume "
                                 "to start it")
            return {}, 0.0
        previous = read_run(self.summary_path)
        if previous.identity != self.identity:
            raise UsageError(f"{self.summary_path} holds another run (its recorded settings differ from these); it is "
                             "kept: move it away or give another --results_dir")
        kept = {entry.fold: entry for entry in previous.folds if _fold_files_kept(entry)}
        return kept, previous.seconds if kept else 0.0

    def write(self, record: RunRecord) -> None:
        write_json(self.summary_path, record_json(record))


RECOMPUTE_FOLD = "move it away and run again: that fold is then recomputed (a changed file is never overwritten)"


def _fold_files_kept(entry: FoldEntry) -> bool:
    """Whether a fold's files are all there with the bytes it wrote; a UsageError when one is there with others.
    Files of records without digests (earlier versions) are kept when present."""
    files = entry.files
    if files.sha256 is None:
        paths = [files.answers, files.summary, *(files.splits or {}).values()]
        return all(p and Path(p).is_file() for p in paths) and (files.head_shifts is None
                                                                  or Path(files.head_shifts).is_dir())
    present = [path for path in files.sha256 if Path(path).is_file()]
    for path in present:
        files.check(path, f"fold {entry.fold}'s file", RECOMPUTE_FOLD)
    return len(present) == len(files.sha256)


def summaries_named_like(cfg: ValidationConfig) -> Iterator[tuple[Path, RunRecord]]:
    """(path, record) of each readable run record in the run's summary folder whose name differs from the run's only
    in its identity hash; files there that are not summaries are passed over."""
    folder = Path(cfg.results_dir) / "results_dump" / "summary_dump"
    for path in sorted(folder.glob(f"{readable_name(cfg)}_????????{METHOD_SUFFIX[cfg.method]}.json")):
        try:
            yield path, read_run(path)
        except UsageError:
            continue


def scored_tables(run: Run, fold: int) -> tuple[Path, Selection, Selection | None] | None:
    """A fold's scored settings from a run that differs from `run` only in options that choose among them (the
    "choice_only" fields: --max_kl), so a run under another budget chooses from the same table without scoring it
    again: (that run's record, its fold's selection, its control's selection or None), or None when no such run
    has scored the fold (with the control, when `run` has one)."""
    choosing = flagged_fields(ValidationConfig, "choice_only")

    def scoring(identity: dict) -> dict:
        return {name: value for name, value in identity.items() if name not in choosing}

    wanted, controlled = scoring(run.identity), run.cfg.control != "none"
    for path, record in summaries_named_like(run.cfg):
        if path == run.summary_path or record.identity is None or scoring(record.identity) != wanted:
            continue
        for entry in record.folds:
            control = entry.control.selection if entry.control else None
            if entry.fold == fold and entry.selection is not None and (control is not None or not controlled):
                return path, entry.selection, control
    return None


def earlier_run_path(cfg: ValidationConfig, complete: bool = True) -> Path | None:
    """The summary of a run made from these settings, as given (complete, unless `complete` is False), and from the
    feature sets that lie there now (by the ids their records hold, which name their bytes; a set not there, or
    unreadable, contradicts nothing): sweeps and --resume ask this before anything is resolved (another device may
    resolve `--dtype auto` otherwise); None if there is none."""
    from iti.features import feature_sets, recorded_ids

    wanted = declared(dataclasses.asdict(cfg), ValidationConfig)
    ids = zip(("probing", "tuning"), recorded_ids(feature_sets(cfg))) if max(cfg.num_heads) > 0 else []
    present = {role: set_id for role, set_id in ids if set_id is not None}
    for path, record in summaries_named_like(cfg):
        read = (record.identity or {}).get("features_dir") or {}
        if ((record.complete or not complete) and declared(record.config, ValidationConfig) == wanted
                and all(read.get(role) == set_id for role, set_id in present.items())):
            return path
    return None
