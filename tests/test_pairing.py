"""Pairing only what pairs (iti.pairing): a paired difference between two runs is taken only when they scored the
same questions, in the same folds, with the same model in the same dtype. Each field on hand-built records, then
real validate_2fold runs of two tiny models, of one model in two dtypes, on other data, questions and folds,
through compare_runs and collect_sweep."""
from __future__ import annotations

import copy
import hashlib
import json
import runpy
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, make_tiny_model, only_file

COMPARE = REPO_ROOT / "validation" / "compare_runs.py"
COLLECT = REPO_ROOT / "validation" / "sweeping" / "collect_sweep.py"
ITI_LABEL = "ITI (K=2, alpha=4, center_of_mass)"


def first_digits(value) -> str:
    """The first 8 hex digits of the SHA-256 of a value's compact JSON: what the reasons show of a digest."""
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- each field, on hand-built records

BASE = {"config": {"model_name": "m", "model_prefix": "", "model_path": None, "dtype": "auto", "seed": 1,
                   "num_fold": 2, "split_rng": "default", "tqa_path": None, "dataset_path": None},
        "identity": {"model_path": "0a0a0a0a", "dtype": "torch.float32", "tqa_path": "d" * 64, "dataset_path": None},
        "resolved": {"model_source": "/models/m", "questions": 4, "tqa_source": "/data/tqa", "method": "probe",
                     "intervenes": True},
        "folds": [{"fold": 0, "test": [0, 2], "results": {}, "files": {"answers": "a0.csv"}},
                  {"fold": 1, "test": [1, 3], "results": {}, "files": {"answers": "a1.csv"}}],
        "complete": True, "final": {}}


def record(**changes):
    """BASE with `changes` ({"identity.dtype": value, …}: a dotted path into the record, a fold by its index)."""
    from iti.records import read_record
    from iti.runs import RunRecord

    values = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split(".")
        place = values
        for key in parents:
            place = place[int(key)] if isinstance(place, list) else place[key]
        place[last] = value
    return read_record(RunRecord, values, "hand-built record", "write it again")


def why(run, baseline):
    from iti.pairing import why_unpaired

    return why_unpaired(run, baseline)


def test_the_same_record_pairs_and_execution_settings_do_not_matter():
    assert why(record(), record()) is None
    assert why(record(**{"config.model_path": "/elsewhere/m", "resolved.model_source": "/elsewhere/m"}), record()) \
        is None  # one model (one fingerprint) moved: it pairs


def test_no_baseline_run_is_said_not_raised():
    from iti.collect import pair_with_baseline

    assert pair_with_baseline([record()], []) == "no baseline run (--num_heads 0 with the same other settings) to " \
                                                 "pair with"


def test_another_model():
    assert why(record(**{"identity.model_path": "1b1b1b1b", "resolved.model_source": "/models/n"}), record()) == \
        "the models differ: 1b1b1b1b (/models/n) against 0a0a0a0a (/models/m)"


def test_another_dtype_without_fingerprints_is_another_model():
    assert why(record(**{"identity.model_path": "1b1b1b1b", "identity.dtype": "torch.float16"}), record()) == \
        "the models differ: 1b1b1b1b (/models/m) in torch.float16 against 0a0a0a0a (/models/m) in torch.float32"


@pytest.fixture(scope="module")
def fingerprints(tokenizer):
    """Fingerprints of a tiny model in float32 and in bfloat16, and of another one (other random weights)."""
    import torch

    from iti.fingerprint import model_fingerprint

    model = make_tiny_model("llama", len(tokenizer), seed=0)
    other = make_tiny_model("llama", len(tokenizer), seed=1)
    fingerprints = {"float32": model_fingerprint(model, tokenizer), "other": model_fingerprint(other, tokenizer)}
    fingerprints["bfloat16"] = model_fingerprint(model.to(torch.bfloat16), tokenizer)
    return json.loads(json.dumps(fingerprints))


def fingerprinted(fingerprint: dict):
    from iti.identity import short_digest

    return record(**{"identity.model_path": short_digest(fingerprint), "identity.dtype": fingerprint["weights"]["dtype"],
                     "resolved.model_fingerprint": fingerprint})


def test_one_checkpoint_in_two_dtypes_is_said_so_and_does_not_pair(fingerprints):
    assert why(fingerprinted(fingerprints["bfloat16"]), fingerprinted(fingerprints["float32"])) == \
        "the same model in another dtype: torch.bfloat16 against torch.float32"


def test_other_weights_are_named_from_the_fingerprints(fingerprints):
    from iti.identity import short_digest

    mine, theirs = fingerprints["other"], fingerprints["float32"]
    first = mine["weights"]["values"]["embedding"][0], theirs["weights"]["values"]["embedding"][0]
    assert first[0] != first[1]
    assert why(fingerprinted(mine), fingerprinted(theirs)) == (
        f"the models differ: {short_digest(mine)} (/models/m) against {short_digest(theirs)} (/models/m), "
        f"other weights (embedding differs: {first[0]:.6g} against {first[1]:.6g})")


def test_a_fingerprint_its_identity_does_not_digest_is_not_used(fingerprints):
    """A record whose fingerprint is not the one its identity names (edited, or of another version) is compared by
    the identity alone."""
    tampered = record(**{"identity.model_path": "1b1b1b1b", "identity.dtype": "torch.bfloat16",
                         "resolved.model_fingerprint": fingerprints["bfloat16"]})
    assert why(tampered, fingerprinted(fingerprints["float32"])).startswith("the models differ: 1b1b1b1b")


def test_other_data():
    assert why(record(**{"identity.tqa_path": None, "identity.dataset_path": "e" * 64,
                         "resolved.tqa_source": "/data/mine.jsonl"}), record()) == \
        "the data differ: /data/mine.jsonl (eeeeeeee) against /data/tqa (dddddddd)"


def test_the_same_data_read_from_another_place_pairs():
    assert why(record(**{"resolved.tqa_source": "/elsewhere/TruthfulQA"}), record()) is None


def test_other_questions():
    assert why(record(**{"resolved.questions": 6, "identity.tqa_path": "f" * 64}), record()) == \
        "the questions differ: 6 of /data/tqa (ffffffff) against 4 of /data/tqa (dddddddd)"


def test_other_folds():
    shuffled = record(**{"folds.0.test": [0, 1], "folds.1.test": [2, 3]})
    assert why(shuffled, record()) == (f"the folds differ: fold 0 tests questions {first_digits([0, 1])} against "
                                       f"{first_digits([0, 2])} (digests of the lists)")
    fewer = record(**{"folds": BASE["folds"][:1]})
    assert why(fewer, record()) == "the folds differ: 1 against 2"


def test_model_and_questions_both_named():
    assert why(record(**{"identity.model_path": "1b1b1b1b", "folds.0.test": [2, 0]}), record()) == (
        "the models differ: 1b1b1b1b (/models/m) against 0a0a0a0a (/models/m); the folds differ: fold 0 tests "
        f"questions {first_digits([2, 0])} against {first_digits([0, 2])} (digests of the lists)")


def test_records_before_identities_pair_by_what_they_name():
    old = {"identity": None, "resolved.model_source": None}
    assert why(record(**old), record(**old)) is None
    assert why(record(**old, **{"config.model_name": "n"}), record(**old)) == "the models differ: n against m"
    assert why(record(**old, **{"config.dataset_path": "/data/x.jsonl"}), record(**old)) == \
        "the data differ: /data/x.jsonl against TruthfulQA"
    # One record with an identity and one without: compared on what both recorded.
    assert why(record(), record(**old)) is None


# ----------------------------------------------------------------------------- real runs of tiny models

LIMIT = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer, tqa_path):
    """Summary paths of validate_2fold runs named `tq` (one --model_name, two --model_path): an ITI run of model
    A, and unshifted runs of A, of A in bfloat16, of model B, of A on a custom set, on fewer questions, with another
    seed and with three folds."""
    from iti.activations import save_features
    from iti.data import build_prompt_set
    from iti.validate import ValidationConfig, run_validation

    root = tmp_path_factory.mktemp("pairing")
    for name, seed in (("a", 0), ("b", 1)):
        make_tiny_model("gqa", len(tokenizer), seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    model_a = make_tiny_model("gqa", len(tokenizer), seed=0)
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        save_features(model_a, tokenizer, build_prompt_set(dataset, tqa_path, limit=LIMIT), root / "features", "tq",
                      progress=False, limit=LIMIT)
    custom = root / "mine.jsonl"
    custom.write_text("".join(json.dumps({"question": f"Is {i} even?", "correct_answers": [["no", "yes"][i % 2 == 0]],
                                          "incorrect_answers": [["yes", "no"][i % 2 == 0]]}) + "\n"
                              for i in range(LIMIT)))

    def run(label, model="a", k=0, alpha=4.0, **options):
        options = {"limit": LIMIT, "tqa_path": str(tqa_path), "seed": 42, **options}
        cfg = ValidationConfig(model_name="tq", model_path=str(root / model), features_dir=str(root / "features"),
                               results_dir=str(root / label), num_heads=k, alpha=alpha, use_center_of_mass=True,
                               metrics=("mc",), device="cpu", **options)
        return run_validation(cfg, progress=False, log=lambda _: None)["json_path"]

    return root, {"iti a": run("iti_a", k=2), "iti a alpha 8": run("iti_a_8", k=2, alpha=8.0), "base a": run("base_a"),
                  "base a bfloat16": run("base_a_bf16", dtype="bfloat16"), "base b": run("base_b", model="b"),
                  "base a custom": run("base_custom", limit=None, tqa_path=None, dataset_path=str(custom),
                                       dataset_name="mine"),
                  "base a 4 questions": run("base_4", limit=4), "base a seed 7": run("base_seed_7", seed=7),
                  "base a 3 folds": run("base_3_folds", num_fold=3)}


def compare(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COMPARE), *map(str, paths)], capture_output=True, text=True)


def read(path) -> dict:
    return json.loads(open(path).read())


def test_runs_of_one_model_pair(runs):
    _, paths = runs
    result = compare(paths["base a"], paths["iti a"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"{ITI_LABEL} − baseline on MC2: ")


def test_runs_of_two_models_under_one_name_are_refused(runs):
    """The issue's case: one --model_name, another --model_path. The records' fingerprints differ (another
    random initialisation), so compare_runs names both and stops before printing anything."""
    root, paths = runs
    iti, base = read(paths["iti a"]), read(paths["base b"])
    assert iti["config"]["model_name"] == base["config"]["model_name"] == "tq"
    assert iti["identity"]["model_path"] != base["identity"]["model_path"]
    result = compare(paths["base b"], paths["iti a"])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {ITI_LABEL} and the baseline do not pair, the models differ: {iti['identity']['model_path']} "
        f"({root / 'a'}) against {base['identity']['model_path']} ({root / 'b'}), other weights (embedding differs: "
        f"{iti['resolved']['model_fingerprint']['weights']['values']['embedding'][0]:.6g} against "
        f"{base['resolved']['model_fingerprint']['weights']['values']['embedding'][0]:.6g}); compare runs of one "
        "model, in one dtype, on the same questions and folds"]


@pytest.mark.parametrize("baseline, reason", [
    ("base a bfloat16", "the same model in another dtype: torch.float32 against torch.bfloat16"),
    ("base a 4 questions", "the questions differ: 6 of {tqa} ({mine}) against 4 of {tqa} ({theirs})"),
    ("base a custom", "the data differ: {tqa} ({mine}) against {root}/mine.jsonl ({theirs})"),
    ("base a 3 folds", "the folds differ: 2 against 3"),
])
def test_other_dtype_data_questions_or_folds_are_refused(runs, tqa_path, baseline, reason):
    root, paths = runs
    iti, base = read(paths["iti a"]), read(paths[baseline])
    digests = [record["identity"]["tqa_path"] or record["identity"]["dataset_path"] for record in (iti, base)]
    expected = reason.format(tqa=tqa_path, root=root, mine=digests[0][:8], theirs=digests[1][:8])
    result = compare(paths[baseline], paths["iti a"])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {ITI_LABEL} and the baseline do not pair, {expected}; compare runs "
                                          "of one model, in one dtype, on the same questions and folds"]


def test_a_baseline_of_another_seed_is_said(runs):
    """The folds test the same questions whatever the seed (it draws the training questions), but a row pairs
    seed by seed (collect_sweep averages both sides over the seeds they share): no difference, and why."""
    _, paths = runs
    tests = [[fold["test"] for fold in read(paths[name])["folds"]] for name in ("iti a", "base a seed 7")]
    assert tests[0] == tests[1]
    result = compare(paths["base a seed 7"], paths["iti a"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (f"{ITI_LABEL} − baseline: no paired difference, no baseline run of "
                                              "seed 42 (the baseline's: 7)")


def test_of_several_runs_each_pair_is_said(runs, tmp_path):
    """Two ITI runs and two baselines: each ITI run pairs with the baseline of its own model; one that pairs with
    none is named with why."""
    root, paths = runs
    result = compare(paths["base b"], paths["base a"], paths["iti a"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"{ITI_LABEL} − baseline on MC2: ")
    result = compare(paths["base b"], paths["iti a"], paths["base a"], paths["iti a alpha 8"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2].startswith(f"{ITI_LABEL} − baseline on MC2: ")
    assert lines[-1].startswith("ITI (K=2, alpha=8, center_of_mass) − baseline on MC2: ")
    # An ITI run whose record names another model (its fingerprint left out): said, and the others still pair.
    other = read(paths["iti a alpha 8"])
    other["identity"]["model_path"], other["resolved"]["model_fingerprint"] = "1b1b1b1b", None
    (tmp_path / "other.json").write_text(json.dumps(other))
    result = compare(paths["base a"], paths["iti a"], tmp_path / "other.json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2].startswith(f"{ITI_LABEL} − baseline on MC2: ")
    assert lines[-1] == (f"ITI (K=2, alpha=8, center_of_mass) − baseline: not paired, the models differ: 1b1b1b1b "
                         f"({root / 'a'}) against {read(paths['base a'])['identity']['model_path']} ({root / 'a'})")


def collect(monkeypatch, results, *paths) -> pd.DataFrame:
    """collect_sweep over copies of these summaries (their answer files stay where the runs wrote them)."""
    summaries = results / "results_dump" / "summary_dump"
    summaries.mkdir(parents=True)
    for path in paths:
        shutil.copy(path, summaries)
    monkeypatch.setattr(sys, "argv", [str(COLLECT), "--model_name", "tq", "--model_path", "hub/tq",
                                      "--use_center_of_mass", "--limit",
                                      str(LIMIT), "--results_dir", str(results)])
    runpy.run_path(str(COLLECT), run_name="__main__")
    return pd.read_csv(only_file(results / "results_dump" / "sweep_dump", f"tq_center_of_mass_limit_{LIMIT}_*.csv"))


def test_collect_sweep_names_why_each_row_is_unpaired(runs, tmp_path, monkeypatch, capsys):
    root, paths = runs
    table = collect(monkeypatch, tmp_path / "results", paths["base b"], paths["iti a"], paths["iti a alpha 8"])
    iti, base = read(paths["iti a"]), read(paths["base b"])
    reason = (f"the models differ: {iti['identity']['model_path']} ({root / 'a'}) against "
              f"{base['identity']['model_path']} ({root / 'b'}), other weights")
    rows = table.set_index(table["K"].astype(str) + "/" + table["alpha"].astype(str))
    assert table["ΔMC2"].isna().all() and list(rows.index) == ["0/4", "2/4", "2/8"]
    assert rows.at["0/4", "unpaired"] == "unshifted: a baseline"
    assert rows.at["2/4", "unpaired"].startswith(reason) and rows.at["2/8", "unpaired"].startswith(reason)
    notes = capsys.readouterr().err.splitlines()
    assert [note.split(": no paired difference, ")[0] for note in notes] == ["note: K 2, α 4", "note: K 2, α 8"]
    assert all(note.split(": no paired difference, ")[1].startswith(reason) for note in notes)
    markdown = only_file(tmp_path / "results" / "results_dump" / "sweep_dump", "*.md").read_text()
    assert "| no Δ because |" in markdown.splitlines()[0] and markdown.count(reason) == 2
    # The model, as loaded, tells the rows apart.
    assert table.loc[table["K"].astype(str) == "0", "settings"].tolist() == [
        f'model_path="{base["identity"]["model_path"]}"']


def test_collect_sweep_pairs_each_model_with_its_own_baseline(runs, tmp_path, monkeypatch, capsys):
    _, paths = runs
    table = collect(monkeypatch, tmp_path / "results", paths["base b"], paths["base a"], paths["iti a"])
    paired = table[table["ΔMC2"].notna()]
    assert paired["json"].str.endswith(paths["iti a"].rsplit("/", 1)[1]).tolist() == [True]
    assert capsys.readouterr().err == ""
    bases = table[table["K"].astype(str) == "0"]
    assert bases["unpaired"].tolist() == ["unshifted: a baseline"] * 2
