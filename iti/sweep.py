"""Sweeps of validate_2fold over models × α × K × seeds: the grid, which of its runs still lack a
complete summary, and one SLURM job array for those (plus one for the features they need).

    python -m iti.sweep cells MODEL                                     the grid, one "name flags" line per run
    python -m iti.sweep sweeps MODEL                                    the same grid, one line per one-process sweep
    python -m iti.sweep status MODEL [MODEL ...] [validate_2fold flags]   done and missing runs, by name
    python -m iti.sweep slurm MODEL [MODEL ...] [validate_2fold flags]    submit the missing runs (sweep_slurm.sh)
    python -m iti.sweep slurm_activations MODEL [MODEL ...] [get_activations flags]   the same for features

The grid comes from the environment, as in the sweep scripts: ALPHAS and KS (space-separated), SEEDS
(unset: validate_2fold's default seed), BASELINE_ONCE (1: α = 0 runs once, with K = 0, as the
sequential scripts do; 0: the plain product, as the SLURM array does). Whether a run is done is
asked of the package: the summary JSON that validate_2fold writes for the run's configuration says
`complete: true`. Only the standard library is imported until a run's configuration is built.
"""
from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from iti.constants import REPO_ROOT
from iti.errors import UsageError, exit_on_usage_error
from iti.identity import LOG_LABEL, LOG_SPELLING, readable_name

VALIDATE_SCRIPT = REPO_ROOT / "validation" / "validate_2fold.py"
EXTRACT_SCRIPT = REPO_ROOT / "get_activations" / "get_activations.py"
COLLECT_SCRIPT = REPO_ROOT / "validation" / "sweeping" / "collect_sweep.py"
LOG_DIR = REPO_ROOT / "validation" / "sweeping" / "logs"
DEFAULT_ALPHAS = "0 5 10 15 20"
DEFAULT_KS = "16 32 48 64"
# Environment variable -> the sbatch option its value completes; each is left to the cluster's default when unset.
RESOURCE_OPTIONS = {"PARTITION": "--partition=", "ACCOUNT": "--account=", "QOS": "--qos=",
                    "CPUS_PER_TASK": "--cpus-per-task=", "MEM": "--mem=", "TIME": "--time=",
                    "GPUS_PER_TASK": "--gres=gpu:"}
# Where to run and who pays, all the collect job takes of them: collecting needs one CPU for seconds.
PLACEMENT = ("PARTITION", "ACCOUNT", "QOS")


@dataclass(frozen=True)
class Task:
    """One run of a script: `name` identifies it in messages, `argv` are its flags."""
    name: str
    argv: tuple[str, ...]


# ----------------------------------------------------------------------------- the grid

def grid(models: Sequence[str], env: Mapping[str, str], baseline_once: bool) -> list[Task]:
    """models × seeds × α × K, named `{model}_a{α}_k{K}[_seed_{s}]` as the sweep logs are. With
    `baseline_once`, α = 0 (the unshifted model, whatever K is) is one run with K = 0."""
    return [Task(readable_name({"model": model, "alpha": alpha, "num_heads": k, "seed": seed}, LOG_LABEL, LOG_SPELLING),
                 ("--model_name", model, "--alpha", alpha, "--num_heads", k, *given({"--seed": seed})))
            for model, seed, alpha, k in grid_cells(models, env, baseline_once)]


def one_process_sweeps(models: Sequence[str], env: Mapping[str, str]) -> list[Task]:
    """The sequential grid (`grid` with `baseline_once`) as `validate_2fold --sweep` processes, each the product of
    its α and K values: per model and seed, the α values that take the same K values make one (with BASELINE_ONCE,
    the α = 0 baseline, K = 0, is a process of its own). Named as the logs of one run, with each part's values
    joined by `-`."""
    ks_of: dict[tuple[str, str | None], dict[str, list[str]]] = {}
    for model, seed, alpha, k in grid_cells(models, env, baseline_once=True):
        ks_of.setdefault((model, seed), {}).setdefault(alpha, []).append(k)
    tasks = []
    for (model, seed), by_alpha in ks_of.items():
        alphas_of: dict[tuple[str, ...], list[str]] = {}
        for alpha, ks in by_alpha.items():
            alphas_of.setdefault(tuple(ks), []).append(alpha)
        for ks, alphas in alphas_of.items():
            name = readable_name({"model": model, "alpha": tuple(alphas), "num_heads": ks, "seed": seed}, LOG_LABEL,
                                 LOG_SPELLING)
            tasks.append(Task(name, ("--model_name", model, "--alpha", *alphas, "--num_heads", *ks,
                                     *given({"--seed": seed}), "--sweep")))
    return tasks


def grid_cells(models: Sequence[str], env: Mapping[str, str],
               baseline_once: bool) -> list[tuple[str, str | None, str, str]]:
    """(model, seed, α, K) of every run of the grid, as spelled in the environment (a value given twice, once)."""
    alphas = _numbers(env, "ALPHAS", DEFAULT_ALPHAS, float)
    ks = _numbers(env, "KS", DEFAULT_KS, int)
    seeds: list[str | None] = list(_numbers(env, "SEEDS", "", int)) or [None]
    once = env.get("BASELINE_ONCE", "1" if baseline_once else "0")
    if once not in ("0", "1"):
        raise UsageError(f"BASELINE_ONCE={once!r}: use 1 (α = 0 runs once, with K = 0) or 0 (every α × K)")
    spaced = [model for model in models if not model or len(model.split()) != 1]
    if spaced:
        raise UsageError(f"model name {spaced[0]!r} holds spaces; give registry names or --model_path")
    cells: dict[tuple, tuple[str, str | None, str, str]] = {}
    for model, seed, alpha in itertools.product(models, seeds, alphas):
        for k in (["0"] if once == "1" and float(alpha) == 0 else ks):
            cells.setdefault((model, seed, float(alpha), int(k)), (model, seed, alpha, k))
    if not cells:
        raise UsageError(f"the grid has no cells (models: {' '.join(models) or 'none'}; ALPHAS={' '.join(alphas)!r}, "
                         f"KS={' '.join(ks)!r}): give at least one model, α and K, e.g. ALPHAS=\"0 5\" KS=\"16 32\"")
    return list(cells.values())


def _numbers(env: Mapping[str, str], key: str, default: str, kind: type) -> list[str]:
    values = env.get(key, default).split()
    for value in values:
        try:
            kind(value)
        except ValueError:
            raise UsageError(f"{key}: {value!r} is not {'an integer' if kind is int else 'a number'}; "
                             f"give space-separated values, e.g. {key}=\"{default or '1 2 3'}\"") from None
    return values


# ----------------------------------------------------------------------------- what is done

def task_options(script: Path, options_cls: type, tasks: Sequence[Task], flags: Sequence[str]) -> dict[Task, object]:
    """Each task's options as `script` builds them from its flags and then `flags`, once the script itself has
    accepted the flags (`--check_args` parses them and exits)."""
    from iti.cli import parse_config

    result = subprocess.run([sys.executable, str(script), *tasks[0].argv, *flags, "--check_args"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        message = lines[-1].removeprefix("error: ") if lines else f"exit code {result.returncode}"
        raise UsageError(f"{script.name} refuses the sweep's flags: {message}")
    return {task: parse_config(options_cls, [*task.argv, *flags]) for task in tasks}


def pending_runs(models: Sequence[str], flags: Sequence[str], env: Mapping[str, str],
                 baseline_once: bool) -> tuple[list[Task], list[Task], dict[Task, object]]:
    """(all cells, cells without a complete summary of their settings, each cell's ValidationConfig)."""
    from iti.config import ValidationConfig
    from iti.runs import earlier_run_path

    cells = grid(models, env, baseline_once)
    configs = task_options(VALIDATE_SCRIPT, ValidationConfig, cells, flags)
    return cells, [cell for cell in cells if earlier_run_path(configs[cell]) is None], configs


def extraction_tasks(configs: Sequence) -> list[Task]:
    """get_activations runs for the features these validation runs read (K = 0 runs read none) and do not find, with
    the settings both scripts take with one meaning (both name features `{model_prefix}{model_name}`). Features that
    exist are checked against the runs' data now (their model is checked when a run loads it)."""
    from iti.features import find_feature_set, verify_feature_set
    from iti.run_inputs import feature_sets

    tasks: dict[str, Task] = {}
    for cfg in configs:
        if max(cfg.num_heads) == 0:
            continue
        for wanted in dict.fromkeys(feature_sets(cfg)):
            if find_feature_set(wanted) is not None:
                verify_feature_set(wanted)
                continue
            argv = ["--model_name", cfg.model_name, "--dataset_name", wanted.dataset,
                    "--features_dir", str(cfg.features_dir), "--device", cfg.device, "--dtype", cfg.dtype,
                    "--prompt_format", cfg.prompt_format,
                    *given({"--model_prefix": cfg.model_prefix or None, "--model_path": cfg.model_path,
                            "--tqa_path": cfg.tqa_path}), *(["--trust_remote_code"] if cfg.trust_remote_code else []),
                    *given({"--dataset_path": wanted.dataset_path, "--limit": wanted.limit})]
            tasks.setdefault(shlex.join(argv), Task(f"{cfg.output_name}_{wanted.dataset}", tuple(argv)))
    return list(tasks.values())


def given(flags: Mapping[str, object]) -> list[str]:
    """`flag value` for each flag that has a value (None: the script's default)."""
    return [word for flag, value in flags.items() if value is not None for word in (flag, str(value))]


# ----------------------------------------------------------------------------- SLURM

@dataclass(frozen=True)
class Submission:
    """One sbatch call: its batch script and options, what it runs (in words), how it waits for the one before."""
    script: str
    options: tuple[str, ...]
    what: str
    waits: str = "afterok"


def array_submission(job_name: str, script: Path, tasks: Sequence[Task], flags: Sequence[str],
                     env: Mapping[str, str], log_dir: Path) -> Submission:
    """An array whose task i runs `script` with tasks[i]'s flags and then `flags`; one log per task.
    sbatch keeps a copy of the batch script, so each task reads its flags from the script itself:
    no task file to keep, nothing to go stale if the sweep is submitted again."""
    lines = ["#!/bin/bash", f"# {job_name}: {len(tasks)} runs of {script.name}", 'case "$SLURM_ARRAY_TASK_ID" in']
    lines += [f"  {i}) name={shlex.quote(task.name)}; argv=({shlex.join(task.argv)}) ;;" for i, task in enumerate(tasks)]
    lines += ['  *) echo "task $SLURM_ARRAY_TASK_ID is not in this array" >&2; exit 1 ;;', "esac",
              f"flags=({shlex.join(flags)})",
              'echo "task $SLURM_ARRAY_TASK_ID ($name) on $(hostname): ${argv[*]} ${flags[*]}"',
              f'exec {shlex.quote(sys.executable)} {shlex.quote(str(script))} "${{argv[@]}}" "${{flags[@]}}"']
    max_parallel = env.get("MAX_PARALLEL", "")
    if max_parallel and not (max_parallel.isdigit() and int(max_parallel) > 0):
        raise UsageError(f"MAX_PARALLEL={max_parallel!r}: give the most tasks to run at once, e.g. MAX_PARALLEL=8")
    array = f"0-{len(tasks) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    options = [f"--job-name={job_name}", f"--array={array}", f"--output={log_dir}/%x_%A_%a.log", *resource_options(env)]
    what = f"{script.stem}, {len(tasks)} task{'' if len(tasks) == 1 else 's'}: {', '.join(t.name for t in tasks)}"
    return Submission("\n".join(lines) + "\n", tuple(options), what)


def collect_submission(models: Sequence[str], flags: Sequence[str], env: Mapping[str, str],
                       log_dir: Path) -> Submission:
    """A small job after the array (however it ended): the missing runs by name, then each model's table."""
    python = shlex.quote(sys.executable)
    lines = ["#!/bin/bash", "rc=0",
             f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} {python} -m iti.sweep status {shlex.join([*models, *flags])} || rc=1"]
    lines += [f"{python} {shlex.quote(str(COLLECT_SCRIPT))} --model_name {shlex.quote(model)} {shlex.join(flags)} || rc=1"
              for model in models]
    options = ["--job-name=iti_collect", f"--output={log_dir}/%x_%j.log",
               *resource_options({key: env[key] for key in PLACEMENT if key in env})]
    return Submission("\n".join([*lines, "exit $rc"]) + "\n", tuple(options),
                      "collect (missing runs by name, then collect_sweep.py)", waits="afterany")


def resource_options(env: Mapping[str, str]) -> list[str]:
    """sbatch options from the RESOURCE_OPTIONS variables and SBATCH_ARGS (anything else, e.g. "--constraint=a100")."""
    options = [f"{option}{env[key]}" for key, option in RESOURCE_OPTIONS.items() if env.get(key)]
    return options + shlex.split(env.get("SBATCH_ARGS", ""))


def job_ids(text: str) -> list[str]:
    """AFTER="123 456" (or 123:456, 123,456): the jobs the first submission waits for."""
    ids = text.replace(",", " ").replace(":", " ").split()
    bad = [job for job in ids if not job.replace("_", "").isdigit()]
    if bad:
        raise UsageError(f"AFTER={text!r}: {bad[0]!r} is not a job id; give the ids sbatch printed, e.g. AFTER=1234")
    return ids


def sbatch(script: str, options: Sequence[str], test_only: bool = False) -> str:
    """Submit (with `test_only`: only check) a batch script; its job id. A refusal is bad input, in the
    scheduler's own words on one line."""
    command = ["sbatch", "--parsable", *options, *(["--test-only"] if test_only else [])]
    result = subprocess.run(command, input=script, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise UsageError(f"sbatch refused the job: {'; '.join(lines) or f'exit code {result.returncode}'}")
    return result.stdout.strip().split(";")[0]


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UsageError("sbatch is not on PATH: submit from a SLURM login node, or sweep on this machine "
                         "with validation/sweeping/sweep_alpha_k.sh or sweep_parallel.sh")


def submit_chain(submissions: Sequence[Submission], after: Sequence[str]) -> list[str]:
    """Submit in order, each waiting for the one before it (the first for `after`), and say what each job runs.
    All are checked with `sbatch --test-only` first, so a refused one (an unknown partition, say) leaves nothing
    submitted."""
    for submission in submissions:
        sbatch(submission.script, submission.options, test_only=True)
    ids: list[str] = []
    for submission in submissions:
        on = ids[-1:] or list(after)
        waits = [f"--dependency={submission.waits}:{':'.join(on)}", "--kill-on-invalid-dep=yes"] if on else []
        ids.append(sbatch(submission.script, [*submission.options, *waits]))
        print(f"submitted job {ids[-1]}: {submission.what}")
    return ids


def log_dir(env: Mapping[str, str]) -> Path:
    """LOG_DIR or validation/sweeping/logs, made now: a task whose log folder is missing dies unheard."""
    path = Path(env.get("LOG_DIR") or LOG_DIR).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- commands

def print_cells(models: list[str], flags: list[str], env: Mapping[str, str]) -> None:
    """The sequential scripts' grid: one `name flags` line per run (model names hold no spaces)."""
    print_tasks("cells", models, flags, lambda: grid(models, env, baseline_once=True))


def print_sweeps(models: list[str], flags: list[str], env: Mapping[str, str]) -> None:
    """The same grid as one-process sweeps (sweep_alpha_k.sh): one `name flags` line per validate_2fold process."""
    print_tasks("sweeps", models, flags, lambda: one_process_sweeps(models, env))


def print_tasks(command: str, models: list[str], flags: list[str], tasks: Callable[[], list[Task]]) -> None:
    if len(models) != 1 or flags:
        raise UsageError(f"usage: python -m iti.sweep {command} MODEL_NAME (the grid from ALPHAS, KS, SEEDS)")
    for task in tasks():
        print(task.name, *task.argv)


def none_missing(total: int, missing: Sequence, done: str) -> bool:
    """Say how many of `total` are `done` already; True (and nothing to submit) when all are."""
    print(f"{total - len(missing)} of {total} {done}")
    if not missing:
        print("nothing to submit")
    return not missing


def print_status(models: list[str], flags: list[str], env: Mapping[str, str]) -> int:
    cells, missing, _ = pending_runs(models, flags, env, baseline_once=False)
    print(f"{len(cells) - len(missing)} of {len(cells)} runs complete")
    for cell in missing:
        print(f"missing: {cell.name}")
    return 1 if missing else 0


def submit_validation(models: list[str], flags: list[str], env: Mapping[str, str]) -> None:
    """validate_2fold's missing runs as one array, then the collect job. The array waits for the jobs
    in AFTER if given, else for an extraction array of the features it needs and does not find."""
    require_sbatch()
    after = job_ids(env.get("AFTER", ""))
    cells, missing, configs = pending_runs(models, flags, env, baseline_once=False)
    if none_missing(len(cells), missing, "runs already complete"):
        return
    logs = log_dir(env)
    extraction = [] if after else extraction_tasks([configs[cell] for cell in missing])
    first = [array_submission("iti_activations", EXTRACT_SCRIPT, extraction, [], env, logs)] if extraction else []
    submit_chain([*first, array_submission("iti_validate", VALIDATE_SCRIPT, missing, flags, env, logs),
                  collect_submission(models, flags, env, logs)], after)
    print(f"logs: {logs}/<job name>_<job>_<task>.log")


def submit_activations(models: list[str], flags: list[str], env: Mapping[str, str]) -> None:
    """get_activations over models × DATASETS, for the features not extracted yet."""
    from iti.config import ActivationsConfig, ValidationConfig
    from iti.features import FeatureSet

    require_sbatch()
    defaults = ValidationConfig()
    datasets = env.get("DATASETS", f"{defaults.dataset_name} {defaults.tuning_dataset}").split()
    tasks = [Task(f"{model}_{dataset}", ("--model_name", model, "--dataset_name", dataset))
             for model in models for dataset in datasets]
    if not tasks:
        raise UsageError(f"no extraction to run (models: {' '.join(models) or 'none'}; DATASETS={' '.join(datasets)!r}): "
                         "give at least one model and dataset")
    configs = task_options(EXTRACT_SCRIPT, ActivationsConfig, tasks, flags)
    wanted = {task: FeatureSet(Path(cfg.features_dir), cfg.output_name, cfg.dataset_name, cfg.limit)
              for task, cfg in configs.items()}
    missing = [task for task in tasks if not wanted[task].exists()]
    if none_missing(len(tasks), missing, "feature sets already extracted"):
        return
    logs = log_dir(env)
    [job] = submit_chain([array_submission("iti_activations", EXTRACT_SCRIPT, missing, flags, env, logs)],
                         job_ids(env.get("AFTER", "")))
    print(f"logs: {logs}/iti_activations_{job}_<task>.log")
    print(f"validation can wait for it: AFTER={job} bash validation/sweeping/sweep_slurm.sh ...")


COMMANDS = {"cells": print_cells, "sweeps": print_sweeps, "status": print_status, "slurm": submit_validation,
            "slurm_activations": submit_activations}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        raise UsageError(f"usage: python -m iti.sweep {{{','.join(COMMANDS)}}} MODEL [MODEL ...] [flags ...]")
    # MODEL [MODEL ...] [flags ...]: the leading words before the first flag are models.
    count = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    return COMMANDS[argv[0]](argv[1:count], argv[count:], os.environ if env is None else env) or 0


if __name__ == "__main__":
    with exit_on_usage_error():
        sys.exit(main())
