"""validation/lm_eval_compare.py on a tiny random model and the ten-item local task tests/lm_eval_tasks/iti_tiny_mc:
the paired difference and its interval are the items' scores of lm-eval's own samples paired and bootstrapped by
hand; a zero steering vector leaves every item's score as it was; a head-shift folder steers as the steer file the
test computes from it by hand (W_o·δ); bad input is one line and exit code 2."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
import torch

from iti.cli import run_main
from iti.statistics import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from tests.conftest import REPO_ROOT, tiny_model_folder

pytest.importorskip("lm_eval")

SCRIPT = REPO_ROOT / "validation" / "lm_eval_compare.py"
TASKS = REPO_ROOT / "tests" / "lm_eval_tasks"
TASK = "iti_tiny_mc"
METRICS = ("acc", "mass")
STEERED_LAYER = 1


def run_script(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the script run in this process as its command line would."""
    spec = importlib.util.spec_from_file_location("lm_eval_compare_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = [str(SCRIPT), *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_main(module.main)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def compare(model_dir: Path, output_dir: Path, *shift: str) -> tuple[Path, str]:
    """The comparison's folder and what the script printed, for a shift given as `--steer_file F` or
    `--head_shifts D`."""
    code, out, err = run_script(*shift, "--model_path", str(model_dir), "--tasks", TASK, "--include_path",
                                str(TASKS), "--device", "cpu", "--batch_size", "8", "--output_dir", str(output_dir))
    assert code == 0, err
    (folder,) = output_dir.iterdir()
    return folder, out


def steer_file(path: Path, vector: torch.Tensor, hookpoint: str = f"layers.{STEERED_LAYER}.self_attn.o_proj") -> Path:
    """A steer file as lm-eval's steered model reads it: `vector` added to the output of the module `hookpoint`
    (layer STEERED_LAYER's o_proj unless given)."""
    torch.save({hookpoint: {"steering_vector": vector, "steering_coefficient": 1.0, "action": "add", "bias": None,
                            "head_index": None}}, path)
    return path


def samples(folder: Path, run: str) -> dict[int, dict]:
    """lm-eval's samples of one run, by document id."""
    lines = (folder / f"samples_{run}.jsonl").read_text().splitlines()
    return {sample["doc_id"]: sample for sample in map(json.loads, lines)}


def table(folder: Path) -> dict[str, dict]:
    return {row["metric"]: row for row in json.loads((folder / "differences.json").read_text())["table"]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return tiny_model_folder(tmp_path_factory, "lm_eval_model", "llama", tokenizer, seed=2)


@pytest.fixture(scope="module")
def head_shifts(model_dir, tmp_path_factory):
    """Two heads of layer STEERED_LAYER shifted along random directions, made for the tiny model."""
    from iti.head_shifts import HeadShifts, ShiftProvenance

    rng = np.random.default_rng(5)
    directions = rng.normal(size=(2, 12))
    shifts = HeadShifts(layers=[STEERED_LAYER, STEERED_LAYER], heads=[0, 3],
                        directions=directions / np.linalg.norm(directions, axis=1, keepdims=True),
                        sigmas=[1.5, 0.8], probe_accuracies=[0.9, 0.8], alpha=4.0, num_layers=3, num_heads=4,
                        head_dim=12, provenance=ShiftProvenance(model_source=str(model_dir)))
    folder = tmp_path_factory.mktemp("shifts") / "tiny_shifts"
    shifts.save(folder)
    return shifts, folder


@pytest.fixture(scope="module")
def steered(model_dir, head_shifts, tmp_path_factory):
    """The comparison with the head shifts' steer file computed here: W_o·δ, in float64 from the saved weights."""
    from safetensors.numpy import load_file

    shifts, _ = head_shifts
    weights = load_file(model_dir / "model.safetensors")
    o_proj = weights[f"model.layers.{STEERED_LAYER}.self_attn.o_proj.weight"].astype(np.float64)
    delta = np.zeros((4, 12))
    for head, direction, sigma in zip(shifts.heads, shifts.directions.astype(np.float64), shifts.sigmas):
        delta[head] = shifts.alpha * sigma * direction
    work = tmp_path_factory.mktemp("steered")
    path = steer_file(work / "by_hand.pt", torch.from_numpy(o_proj @ delta.reshape(-1)))
    return compare(model_dir, work / "out", "--steer_file", str(path))


def test_the_difference_and_interval_are_the_samples_paired_by_hand(steered):
    folder, printed = steered
    unshifted, shifted = samples(folder, "unshifted"), samples(folder, "shifted")
    assert sorted(unshifted) == sorted(shifted) == list(range(10))
    record = json.loads((folder / "differences.json").read_text())
    rows = table(folder)
    assert sorted(rows) == sorted(METRICS) and record["not_paired"] == []
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, 10, size=(BOOTSTRAP_RESAMPLES, 10))
    tail = (1 - BOOTSTRAP_LEVEL) / 2
    for metric in METRICS:
        base = np.array([unshifted[i][metric] for i in range(10)])
        treated = np.array([shifted[i][metric] for i in range(10)])
        row = rows[metric]
        assert row["items"] == 10
        # lm-eval's own aggregate of each run is the mean of its items.
        assert row["unshifted"] == pytest.approx(record["lm_eval_results"]["unshifted"][TASK][f"{metric},none"],
                                                 rel=1e-12)
        assert row["shifted"] == pytest.approx(record["lm_eval_results"]["shifted"][TASK][f"{metric},none"],
                                               rel=1e-12)
        assert row["difference"] == pytest.approx(treated.mean() - base.mean(), rel=1e-12, abs=1e-15)
        low, high = np.quantile(treated[draws].mean(axis=1) - base[draws].mean(axis=1), [tail, 1 - tail])
        assert (row["low"], row["high"]) == pytest.approx((low, high), rel=1e-12, abs=1e-15)
        assert f"{row['difference']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]" in printed
    csv = pd.read_csv(folder / "differences.csv").set_index("metric")
    for metric in METRICS:
        assert csv.loc[metric, "difference"] == pytest.approx(rows[metric]["difference"], rel=1e-12, abs=1e-15)
    assert str(folder) in printed


def test_a_non_zero_vector_changes_every_item(steered):
    folder, _ = steered
    unshifted, shifted = samples(folder, "unshifted"), samples(folder, "shifted")
    for doc_id, sample in unshifted.items():
        assert sample["mass"] != shifted[doc_id]["mass"]
        assert sample["filtered_resps"] != shifted[doc_id]["filtered_resps"]
    assert table(folder)["mass"]["difference"] != 0


def test_a_zero_vector_leaves_every_score(model_dir, tmp_path):
    folder, _ = compare(model_dir, tmp_path / "out", "--steer_file", str(steer_file(tmp_path / "zero.pt",
                                                                                     torch.zeros(48))))
    unshifted, shifted = samples(folder, "unshifted"), samples(folder, "shifted")
    for doc_id, sample in unshifted.items():
        assert [sample[m] for m in METRICS] == [shifted[doc_id][m] for m in METRICS]
        assert sample["filtered_resps"] == shifted[doc_id]["filtered_resps"]
    for row in table(folder).values():
        assert (row["difference"], row["low"], row["high"]) == (0, 0, 0)


def test_a_head_shift_folder_steers_as_its_steer_file_by_hand(model_dir, head_shifts, steered, tmp_path):
    """--head_shifts, the model found from what the shifts record: its steer file written into the comparison's
    folder, and every item's log-likelihoods those of the steer file computed by hand (float32 rounding of W_o·δ
    apart)."""
    _, shifts_folder = head_shifts
    code, _, err = run_script("--head_shifts", str(shifts_folder), "--tasks", TASK, "--include_path", str(TASKS),
                              "--device", "cpu", "--output_dir", str(tmp_path))
    assert code == 0, err
    (folder,) = tmp_path.iterdir()
    assert (folder / "steer.pt").is_file()
    by_hand = samples(steered[0], "shifted")
    for doc_id, sample in samples(folder, "shifted").items():
        np.testing.assert_allclose([ll for ll, _ in sample["filtered_resps"]],
                                   [ll for ll, _ in by_hand[doc_id]["filtered_resps"]], rtol=0, atol=1e-4)


def test_a_comparison_made_before_is_kept(model_dir, steered):
    """Without --overwrite a comparison's folder is kept; with it, a folder holding a file it did not write is kept
    too."""
    folder, _ = steered
    (folder / "my_notes.txt").write_text("mine")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    args = ["--steer_file", str(folder.parent.parent / "by_hand.pt"), "--model_path", str(model_dir), "--tasks", TASK,
            "--include_path", str(TASKS), "--output_dir", str(folder.parent)]
    for extra, phrase in (([], "add --overwrite"), (["--overwrite"], "my_notes.txt")):
        code, _, err = run_script(*args, *extra)
        assert code == 2 and err.count("\n") == 1 and phrase in err, err
        assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def bad_steer(tmp_path: Path) -> Path:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a torch file")
    return path


def object_steer(tmp_path: Path) -> Path:
    """A steer file that pickles an object besides tensors, which lm-eval's loader would build (and run)."""
    path = tmp_path / "object.pt"
    torch.save({f"layers.{STEERED_LAYER}.self_attn.o_proj": {"steering_vector": torch.zeros(48), "action": "add",
                                                             "note": PurePosixPath("anything")}}, path)
    return path


@pytest.mark.parametrize("make_args, phrase", [
    (lambda tmp, model: ["--tasks", TASK], "exactly one of --head_shifts"),
    (lambda tmp, model: ["--steer_file", str(steer_file(tmp / "s.pt", torch.zeros(48))), "--head_shifts", str(tmp),
                         "--tasks", TASK], "exactly one of --head_shifts"),
    (lambda tmp, model: ["--steer_file", str(steer_file(tmp / "s.pt", torch.zeros(48)))], "--tasks is needed"),
    (lambda tmp, model: ["--steer_file", str(bad_steer(tmp).rename(tmp / "s.npy")), "--tasks", TASK],
     "no .pt or .pth file"),
    (lambda tmp, model: ["--steer_file", str(steer_file(tmp / "s.pt", torch.zeros(48))), "--tasks", "../up"],
     "--tasks '../up'"),
    (lambda tmp, model: ["--steer_file", str(steer_file(tmp / "s.pt", torch.zeros(48))), "--model_path", str(model),
                         "--tasks", "no_such_task_anywhere", "--include_path", str(TASKS)],
     "--tasks no_such_task_anywhere is not among"),
    (lambda tmp, model: ["--steer_file", str(bad_steer(tmp)), "--model_path", str(model), "--tasks", TASK,
                         "--include_path", str(TASKS)], "is not a steer file of tensors"),
    (lambda tmp, model: ["--steer_file", str(object_steer(tmp)), "--model_path", str(model), "--tasks", TASK,
                         "--include_path", str(TASKS)], "is not a steer file of tensors"),
    (lambda tmp, model: ["--steer_file", str(steer_file(tmp / "s.pt", torch.zeros(7))), "--model_path", str(model),
                         "--tasks", TASK, "--include_path", str(TASKS)], "has 7 values, the module's output 48"),
    (lambda tmp, model: ["--steer_file", str(steer_file(tmp / "s.pt", torch.zeros(48), "layers.9.self_attn.o_proj")),
                         "--model_path", str(model), "--tasks", TASK, "--include_path", str(TASKS), "--device", "cpu"],
     "steers layers.9.self_attn.o_proj, which is no module"),
])
def test_bad_input_is_one_line_and_exit_2(make_args, phrase, model_dir, tmp_path):
    args = make_args(tmp_path, model_dir)
    code, _, err = run_script(*args, "--output_dir", str(tmp_path / "out"))
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and phrase in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_options_parse_without_importing_torch_or_lm_eval(tmp_path):
    """What the script imports to parse and check its options (iti.cli, iti.lm_eval_compare) loads neither torch nor
    lm-eval, so --help and bad flags are answered at once."""
    steer = steer_file(tmp_path / "s.pt", torch.zeros(48))
    probe = ("import sys\nfrom iti.cli import parse_config\nfrom iti.lm_eval_compare import LmEvalCompareConfig\n"
             f"parse_config(LmEvalCompareConfig, ['--steer_file', {str(steer)!r}, '--tasks', {TASK!r}])\n"
             "print(sorted({'torch', 'lm_eval'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def lm_eval_run(task: str, items: dict[str, list], aggregates: dict[str, object]) -> dict:
    """lm-eval's results as simple_evaluate returns them with log_samples, for one task whose items score
    `items[metric][i]` (filter "none") and whose reported values are `aggregates[metric]`."""
    metrics = list(items)
    count = len(next(iter(items.values())))
    samples = [{"doc_id": i, "filter": "none", "metrics": metrics, **{m: items[m][i] for m in metrics}}
               for i in range(count)]
    return {"samples": {task: samples},
            "results": {task: {f"{metric},none": value for metric, value in aggregates.items()}}}


def test_metrics_lm_eval_does_not_average_get_a_note_not_a_difference():
    from iti.errors import UsageError
    from iti.lm_eval_compare import paired_metrics

    scores = {"acc": [1.0, 0.0, 1.0], "bleu": [("ref", "a"), ("ref", "b"), ("ref", "c")], "ppl": [2.0, 3.0, 4.0]}
    unshifted = lm_eval_run("t", scores, {"acc": 2 / 3, "bleu": 10.0, "ppl": 2.9})
    shifted = lm_eval_run("t", {**scores, "acc": [1.0, 1.0, 1.0]}, {"acc": 1.0, "bleu": 12.0, "ppl": 2.9})
    table, notes = paired_metrics(unshifted, shifted)
    assert [(m.metric, m.items, m.difference.value) for m in table] == [("acc", 3, pytest.approx(1 / 3))]
    assert len(notes) == 2 and "t bleu" in notes[0] and "no number" in notes[0]
    assert "t ppl" in notes[1] and "no mean" in notes[1]
    fewer = lm_eval_run("t", {"acc": [1.0, 0.0]}, {"acc": 0.5})
    with pytest.raises(UsageError, match="other items of t"):
        paired_metrics(unshifted, fewer)
