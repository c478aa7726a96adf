"""A validate_2fold run's identity and files: its name, where each file goes, which finished folds an
earlier run of the same identity left, the JSON record, and finding complete runs for sweeps.

Layout under `results_dir` (the public workflow's, with the identity hash added):
- `splits/fold_{i}_{train|val|test|select}[_{dataset}]_seed_{seed}[_limit_{N}]_{split hash}.csv`;
- `results_dump/head_shifts_dump/{name}_fold_{i}{method}/`: the fold's HeadShifts;
- `results_dump/answer_dump/{name}_fold_{i}{method}.csv`: per test question the answer and every score;
- `results_dump/summary_dump/{name}_fold_{i}{method}.csv` and `{name}{method}.json` (the record);
- `results_dump/probe_report/{name}_fold_{i}{method}_{heads|layers}.csv`;
where name = `{model}[_{dataset}]_seed_{seed}_top_{K}_heads_alpha_{α}[_limit_{N}]_{hash}`, the hash naming
every setting that changes the numbers as resolved (iti.identity), and method `_com`, `_random` or nothing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from iti.config import HeadShiftOptions, ValidationConfig
from iti.errors import UsageError
from iti.files import write_json
from iti.identity import declared, identity, short_digest, split_fields
from iti.options import values_of
from iti.summaries import read_summary

METHOD_SUFFIX = {"center_of_mass": "_com", "random": "_random", "probe": ""}


def readable_name(cfg: HeadShiftOptions) -> str:
    """`{model}[_{dataset}]_seed_{seed}_top_{K}_heads_alpha_{α}[_limit_{N}]`: the named settings (of a run, or of
    an edit_weight bake). α is written with `:g` (15 → "15", 2.5 → "2.5"): the public int(α) made sweeps over
    fractional α collide."""
    heads = "-".join(str(k) for k in values_of(cfg.num_heads))
    alphas = "-".join(f"{alpha:g}" for alpha in values_of(cfg.alpha))
    name = f"{cfg.output_name}{dataset_tag(cfg)}_seed_{cfg.seed}_top_{heads}_heads_alpha_{alphas}"
    return name + (f"_limit_{cfg.limit}" if cfg.limit is not None else "")


def dataset_tag(cfg: HeadShiftOptions) -> str:
    """`_{dataset_name}` in a --dataset_path run's names; TruthfulQA runs keep the public names."""
    return f"_{cfg.dataset_name}" if cfg.custom else ""


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

    def fold_name(self, fold: int) -> str:
        return f"{self.name}_fold_{fold}{METHOD_SUFFIX[self.cfg.method]}"

    @property
    def dump(self) -> Path:
        return Path(self.cfg.results_dir) / "results_dump"

    @property
    def summary_path(self) -> Path:
        return self.dump / "summary_dump" / f"{self.name}{METHOD_SUFFIX[self.cfg.method]}.json"

    def split_path(self, fold: int, part: str) -> Path:
        cfg = self.cfg
        split_hash = short_digest({name: self.identity[name] for name in split_fields(ValidationConfig)})
        limit = f"_limit_{cfg.limit}" if cfg.limit is not None else ""
        return (Path(cfg.results_dir) / "splits"
                / f"fold_{fold}_{part}{dataset_tag(cfg)}_seed_{cfg.seed}{limit}_{split_hash}.csv")

    def answer_path(self, fold: int) -> Path:
        return self.dump / "answer_dump" / f"{self.fold_name(fold)}.csv"

    def fold_summary_path(self, fold: int) -> Path:
        return self.dump / "summary_dump" / f"{self.fold_name(fold)}.csv"

    def head_shifts_dir(self, fold: int) -> Path:
        return self.dump / "head_shifts_dump" / self.fold_name(fold)

    def probe_report_path(self, fold: int, table: str) -> Path:
        return self.dump / "probe_report" / f"{self.fold_name(fold)}_{table}.csv"

    def finished_folds(self) -> tuple[dict[int, dict], float]:
        """The folds an earlier run of this identity completed (its files all present), by index, and the seconds
        that run took (0 when none is kept). A record at this path of another identity (a hash collision, or not
        ours) is never overwritten."""
        previous = read_json(self.summary_path)
        if previous is None:
            if self.cfg.resume:
                raise UsageError(f"--resume: no earlier run of these settings at {self.summary_path}; drop --resume "
                                 "to start it")
            return {}, 0.0
        if previous.get("identity") != self.identity:
            raise UsageError(f"{self.summary_path} holds another run (its recorded settings differ from these); it is "
                             "kept: move it away or give another --results_dir")
        kept = {entry["fold"]: entry for entry in previous.get("folds", []) if _fold_files_present(entry)}
        return kept, float(previous.get("seconds") or 0.0) if kept else 0.0

    def write(self, record: dict) -> None:
        write_json(self.summary_path, record)


def read_json(path: Path) -> dict | None:
    """The run record at `path`; None when there is none. One that is not a validate_2fold summary (cut short,
    another program's) is a UsageError naming it: it is not ours to replace."""
    if not path.exists():
        return None
    return read_summary(path)


def _fold_files_present(entry: dict) -> bool:
    files = entry.get("files", {})
    paths = [files.get("answers"), files.get("summary"), *files.get("splits", {}).values()]
    shifts = files.get("head_shifts")
    return all(p and Path(p).is_file() for p in paths) and (shifts is None or Path(shifts).is_dir())


def earlier_run_path(cfg: ValidationConfig, complete: bool = True) -> Path | None:
    """The summary of a run made from these settings, as given (complete, unless `complete` is False): sweeps
    and --resume ask this before anything is resolved (another device may resolve `--dtype auto`
    otherwise); None if there is none."""
    folder = Path(cfg.results_dir) / "results_dump" / "summary_dump"
    wanted = declared(dataclasses.asdict(cfg), ValidationConfig)
    for path in sorted(folder.glob(f"{readable_name(cfg)}_????????{METHOD_SUFFIX[cfg.method]}.json")):
        try:
            record = read_json(path)
        except UsageError:  # not a summary: no earlier run of these settings
            continue
        if record and (record.get("complete") is True or not complete) \
                and declared(record.get("config", {}), ValidationConfig) == wanted:
            return path
    return None
