"""Feature content is identity (issue 33): get_activations records the SHA-256 of every file it writes, every reader
checks the bytes before use and refuses a changed one in one line, a run's identity names the bytes (so resume never
keeps folds made from other bytes), its provenance lists what it read, and one extraction writes a set at a time."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading

import numpy as np
import pytest

import iti.activations
import iti.files
from iti.activations import save_features
from iti.data import build_prompt_set
from iti.errors import UsageError
from iti.features import FeatureSet, load_features, read_record, require_feature_sets, verify_against_data
from iti.fingerprint import model_fingerprint
from iti.runs import earlier_run_path
from iti.validate import ValidationConfig, run_validation
from tests.conftest import make_tiny_model, record_changed_features

ITEMS = [{"question": f"Question {i}?", "correct_answers": [f"Yes {i}."], "incorrect_answers": [f"No {i}."]}
         for i in range(5)]
ARRAYS = ("head_wise", "layer_wise", "labels", "question_ids")


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return make_tiny_model("llama", len(tokenizer)), tokenizer


def write_items(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def extracted(tiny, tmp_path, items=ITEMS, name="data.jsonl") -> FeatureSet:
    """A set get_activations' save_features wrote from `items` in tmp_path/f (residual streams included)."""
    model, tokenizer = tiny
    data = write_items(tmp_path / name, items)
    save_features(model, tokenizer, build_prompt_set("d", None, None, 42, str(data)), tmp_path / "f", "tiny",
                  progress=False)
    return FeatureSet(tmp_path / "f", "tiny", "d", dataset_path=str(data))


def flip_byte(path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refusal(wanted: FeatureSet, kind: str) -> str:
    with pytest.raises(UsageError) as caught:
        load_features(wanted, "layer_wise" if kind == "layer_wise" else "head_wise")
    return str(caught.value)


def test_the_record_holds_the_sha256_of_every_file_written(tiny, tmp_path):
    wanted = extracted(tiny, tmp_path)
    recorded = read_record(wanted).sha256
    assert recorded == {kind: sha256(wanted.path(kind)) for kind in ARRAYS}


@pytest.mark.parametrize("kind", ARRAYS)
def test_a_flipped_byte_in_any_array_is_refused_naming_the_file_and_the_command(tiny, tmp_path, kind):
    wanted = extracted(tiny, tmp_path)
    flip_byte(wanted.path(kind), -1)  # the last value's last byte: the header still reads
    message = refusal(wanted, kind)
    assert message.startswith(f"features file {wanted.path(kind)} is not the file that was written there")
    assert "(changed or damaged since)" in message and message.endswith(f"`{wanted.command(overwrite=True)}`")


def test_a_flipped_label_is_refused_though_it_is_still_0_or_1(tiny, tmp_path):
    wanted = extracted(tiny, tmp_path)
    labels = np.load(wanted.path("labels"))
    labels[0] = 1 - labels[0]
    np.save(wanted.path("labels"), labels)
    assert f"{wanted.path('labels')} is not the file that was written there" in refusal(wanted, "labels")


def test_a_flipped_exponent_in_the_activations_is_refused(tiny, tmp_path):
    wanted = extracted(tiny, tmp_path)
    path = wanted.path("head_wise")
    data = bytearray(path.read_bytes())
    top = len(data) - np.load(path).nbytes + 3  # the first float32's sign and high exponent bits
    data[top] = (data[top] & 0x80) | 0x7e  # a finite value near 1e38, as a damaged disk may leave
    path.write_bytes(bytes(data))
    assert np.isfinite(np.load(path)).all() and np.abs(np.load(path)).max() > 1e37
    assert f"{path} is not the file that was written there" in refusal(wanted, "head_wise")


def test_each_file_is_hashed_once_a_process_while_it_stays_as_it_was(tiny, tmp_path, monkeypatch):
    wanted = extracted(tiny, tmp_path)
    hashed = []
    real = iti.files.sha256_of
    monkeypatch.setattr(iti.files, "sha256_of", lambda path: hashed.append(path) or real(path))
    require_feature_sets([wanted])
    load_features(wanted)
    load_features(wanted)
    assert sorted(map(str, hashed)) == sorted(str(wanted.path(kind)) for kind in ("head_wise", "labels", "question_ids"))
    replaced = tmp_path / "copy.npy"
    shutil.copy(wanted.path("labels"), replaced)
    replaced.replace(wanted.path("labels"))  # the same bytes in a new file: hashed again
    load_features(wanted)
    assert [str(path) for path in hashed[3:]] == [str(wanted.path("labels"))]


def test_a_set_recorded_by_an_older_version_is_re_extracted(tiny, tmp_path):
    wanted = extracted(tiny, tmp_path)
    meta = json.loads(wanted.path("meta").read_text())
    meta.pop("sha256")
    wanted.path("meta").write_text(json.dumps({**meta, "record_version": 2}))
    with pytest.raises(UsageError, match="was written by an older version or another program"):
        load_features(wanted)


def test_the_id_names_the_bytes(tiny, tmp_path):
    wanted = extracted(tiny, tmp_path)
    before = read_record(wanted).id
    (tmp_path / "again").mkdir()
    again = extracted(tiny, tmp_path / "again")
    assert read_record(again).id == before  # the same model and rows write the same bytes
    flip_byte(wanted.path("layer_wise"), -1)
    record_changed_features(wanted.path("meta"))
    assert read_record(wanted).id != before


def test_two_extractions_of_one_set_at_once_the_second_refuses(tiny, tmp_path, monkeypatch):
    """The first extraction is held midway (its rows being read) while a second of the same name, from another
    file, starts: the second refuses in one line and the first completes, its files whole and its own."""
    model, tokenizer = tiny
    first, second = write_items(tmp_path / "first.jsonl", ITEMS), write_items(tmp_path / "second.jsonl", ITEMS[::-1])
    midway, release = threading.Event(), threading.Event()
    real = iti.activations.extract_activations

    def held(*args, **kwargs):
        midway.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(iti.activations, "extract_activations", held)
    failures = []

    def extract_first():
        try:
            save_features(model, tokenizer, build_prompt_set("d", None, None, 42, str(first)), tmp_path / "f", "tiny",
                          progress=False)
        except Exception as err:  # reported below, not lost in the thread
            failures.append(err)

    thread = threading.Thread(target=extract_first)
    thread.start()
    try:
        assert midway.wait(60)
        with pytest.raises(UsageError, match=r"features .*tiny_d_head_wise.npy is being written by another process"):
            save_features(model, tokenizer, build_prompt_set("d", None, None, 42, str(second)), tmp_path / "f",
                          "tiny", progress=False)
    finally:
        release.set()
        thread.join(60)
    assert not failures
    wanted = FeatureSet(tmp_path / "f", "tiny", "d", dataset_path=str(first))
    verify_against_data(wanted, model_fingerprint=model_fingerprint(model, tokenizer))
    load_features(wanted)
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == sorted(
        f"tiny_d_{kind}.{'json' if kind == 'meta' else 'npy'}" for kind in (*ARRAYS, "meta"))


# ----------------------------------------------------------------------------- resume

@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, tokenizer, tqa_path):
    """A tiny model folder and its features of the first 6 questions, with a clean copy kept aside."""
    root = tmp_path_factory.mktemp("resume")
    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        save_features(model, tokenizer, build_prompt_set(dataset, tqa_path, limit=6), root / "clean", "tiny",
                      progress=False, limit=6)
    return root


def test_resume_keeps_only_folds_of_the_same_bytes_and_records_what_was_read(run_inputs, tqa_path, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(run_inputs / "clean", features)
    cfg = ValidationConfig(model_name="tiny", model_path=str(run_inputs / "model"), features_dir=str(features),
                           results_dir=str(tmp_path / "results"), tqa_path=str(tqa_path), limit=6, num_heads=2,
                           alpha=5.0, use_center_of_mass=True, metrics=("mc",), device="cpu", batch_size=4)
    logged = []
    clean = run_validation(cfg, progress=False, log=logged.append)
    # What the run reads: the probing set with its residual streams, the tuning set's rows and ids.
    files = [p for p in features.glob("*.npy") if p.name != "tiny_tqa_gen_end_q_limit_6_layer_wise.npy"]
    assert clean["provenance"]["features_sha256"] == {str(p): sha256(p) for p in files}
    summary = clean["json_path"]
    written = open(summary, "rb").read()

    labels = features / "tiny_tqa_mc2_limit_6_labels.npy"
    flipped = np.load(labels)
    flipped[0] = 1 - flipped[0]
    np.save(labels, flipped)
    with pytest.raises(UsageError, match=f"{labels} is not the file that was written there"):
        run_validation(cfg, progress=False, log=logged.append)
    assert open(summary, "rb").read() == written

    # The same flip, recorded as if extracted so: other bytes, another run; the clean one is not resumed from.
    record_changed_features(features / "tiny_tqa_mc2_limit_6_meta.json")
    assert earlier_run_path(cfg) is None
    logged.clear()
    other = run_validation(cfg, progress=False, log=logged.append)
    assert other["json_path"] != summary and not any("kept from" in line for line in logged)
    assert other["provenance"]["features_sha256"][str(labels)] == sha256(labels)
    assert other["identity"]["features_dir"]["probing"] != clean["identity"]["features_dir"]["probing"]

    # The clean bytes back: their run is found and its folds kept, none of the other run's.
    for path in (run_inputs / "clean").iterdir():
        shutil.copy(path, features / path.name)
    assert str(earlier_run_path(cfg)) == summary
    logged.clear()
    again = run_validation(cfg, progress=False, log=logged.append)
    assert again["json_path"] == summary
    assert [line for line in logged if "kept from" in line] == [
        f"Fold {fold}: kept from {summary} (same settings; delete that file to recompute)" for fold in range(2)]
    assert again["folds"] == clean["folds"]
    assert again["provenance"]["features_sha256"] == {str(p): sha256(p) for p in files}
