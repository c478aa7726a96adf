"""Features know what made them: the record get_activations writes, and every way a set can be the wrong one
(another model, an edited dataset, a renamed subset, another prompt format) refused in one line; features of
a name made differently are never replaced without --overwrite. Their content is their identity (issue 33): the
record holds the SHA-256 of every file written, every reader checks the bytes before use and refuses a changed one
in one line, a run's identity names the bytes (resume never keeps folds made from other bytes), its provenance lists
what it read, and one extraction writes a set at a time."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading

import numpy as np
import pytest
import torch

import iti.activations
import iti.files
from iti.activations import save_features
from iti.data import build_prompt_set
from iti.errors import UsageError
from iti.features import (FeatureSet, feature_path, load_features, read_record, require_feature_sets,
                          verify_against_data)
from iti.fingerprint import differs, model_fingerprint
from iti.geometry import head_geometry
from iti.records import record_json
from iti.runs import earlier_run_path
from iti.validate import ValidationConfig, run_validation
from tests.conftest import make_tiny_model, record_changed_features, tiny_model_folder

ITEMS = [{"question": f"Question {i}?", "correct_answers": [f"Yes {i}."], "incorrect_answers": [f"No {i}."]}
         for i in range(5)]


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return make_tiny_model("llama", len(tokenizer)), tokenizer


def write_items(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def extract(tiny, folder, name="tiny", dataset="d", dataset_path=None, limit=None, tqa_path=None, overwrite=False):
    model, tokenizer = tiny
    prompt_set = build_prompt_set(dataset, tqa_path, limit, 42, dataset_path)
    return save_features(model, tokenizer, prompt_set, folder, name, progress=False, limit=limit, overwrite=overwrite)


def test_the_record_names_model_data_format_and_limit(tiny, tmp_path):
    data = write_items(tmp_path / "d.jsonl", ITEMS)
    paths = extract(tiny, tmp_path / "f", dataset_path=str(data), limit=3)
    record = json.loads(paths["meta"].read_text())
    assert record["model_name"] == "tiny" and record["dataset"] == "d" and record["limit"] == 3
    assert record["prompt_format"] == "raw" and record["questions"] == 3 and len(record["id"]) == 8
    assert record["model"] == model_fingerprint(*tiny)
    verify_against_data(FeatureSet(tmp_path / "f", "tiny", "d", 3, dataset_path=str(data)), None,
                        model_fingerprint=model_fingerprint(*tiny))


def test_the_record_reads_back_whole_with_the_models_geometry(tiny, tmp_path):
    data = write_items(tmp_path / "d.jsonl", ITEMS)
    paths = extract(tiny, tmp_path / "f", dataset_path=str(data))
    record = read_record(FeatureSet(tmp_path / "f", "tiny", "d"))
    model_geometry = head_geometry(tiny[0].config)
    assert record.geometry == model_geometry and record.other["hidden_size"] == model_geometry.hidden_size
    assert record_json(record) == json.loads(paths["meta"].read_text())


@pytest.mark.parametrize("change, phrase", [
    (lambda meta: meta.update(record_version=1), "was written by an older version or another program"),
    (lambda meta: meta.update(row_count=0), "its counts of rows, layers, heads and head_dim must be positive"),
    (lambda meta: meta.update(seed="42"), "seed is a JSON string, not a whole number"),
    (lambda meta: meta.pop("model"), "model is missing"),
])
def test_a_record_that_does_not_describe_the_features_is_refused(tiny, tmp_path, change, phrase):
    data = write_items(tmp_path / "d.jsonl", ITEMS)
    paths = extract(tiny, tmp_path / "f", dataset_path=str(data))
    meta = json.loads(paths["meta"].read_text())
    change(meta)
    paths["meta"].write_text(json.dumps(meta))
    wanted = FeatureSet(tmp_path / "f", "tiny", "d", dataset_path=str(data))
    with pytest.raises(UsageError) as caught:
        verify_against_data(wanted)
    assert str(caught.value).startswith(str(paths["meta"])) and phrase in str(caught.value)
    assert str(caught.value).endswith(f"re-extract them with `{wanted.command(overwrite=True)}`")


def test_features_of_another_model_are_refused(tiny, tmp_path, tokenizer):
    data = write_items(tmp_path / "d.jsonl", ITEMS)
    extract(tiny, tmp_path / "f", dataset_path=str(data))
    for path in (tmp_path / "f").iterdir():  # copied under another model's name
        shutil.copy(path, tmp_path / "f" / path.name.replace("tiny_", "other_", 1))
    with pytest.raises(UsageError, match=r"other_d_head_wise.npy was made for model tiny, dataset d \(its record\)"):
        verify_against_data(FeatureSet(tmp_path / "f", "other", "d", dataset_path=str(data)))
    same_shape = make_tiny_model("llama", len(tokenizer), seed=1)
    with pytest.raises(UsageError, match=r"come from another model than this run's: other weights"):
        verify_against_data(FeatureSet(tmp_path / "f", "tiny", "d", dataset_path=str(data)),
                            model_fingerprint=model_fingerprint(same_shape, tokenizer))


def test_an_edited_dataset_is_refused(tiny, tmp_path):
    data = write_items(tmp_path / "d.jsonl", ITEMS)
    extract(tiny, tmp_path / "f", dataset_path=str(data))
    swapped = [dict(item, correct_answers=item["incorrect_answers"], incorrect_answers=item["correct_answers"])
               for item in ITEMS]
    write_items(data, swapped)
    with pytest.raises(UsageError, match="were extracted from other items: the dataset changed since"):
        verify_against_data(FeatureSet(tmp_path / "f", "tiny", "d", dataset_path=str(data)))


def test_a_renamed_subset_is_refused(tiny, tmp_path, tqa_path):
    paths = extract(tiny, tmp_path / "f", dataset="tqa_gen_end_q", limit=4, tqa_path=tqa_path)
    for kind, path in paths.items():
        path.rename(feature_path(tmp_path / "f", "tiny", "tqa_gen_end_q", kind, 3))
    with pytest.raises(UsageError, match=r"holds the first 4 questions \(its record\), not what its name says"):
        verify_against_data(FeatureSet(tmp_path / "f", "tiny", "tqa_gen_end_q", 3), tqa_path)


def test_another_prompt_format_is_refused(tiny, tmp_path):
    data = write_items(tmp_path / "d.jsonl", ITEMS)
    extract(tiny, tmp_path / "f", dataset_path=str(data))
    with pytest.raises(UsageError, match="were extracted with --prompt_format raw, this run asks for chat"):
        verify_against_data(FeatureSet(tmp_path / "f", "tiny", "d", dataset_path=str(data), prompt_format="chat"))


def test_features_made_differently_are_kept_unless_overwrite(tiny, tmp_path):
    first = write_items(tmp_path / "first.jsonl", ITEMS)
    second = write_items(tmp_path / "second.jsonl", ITEMS[::-1])
    paths = extract(tiny, tmp_path / "f", dataset_path=str(first))
    before = paths["head_wise"].read_bytes()
    extract(tiny, tmp_path / "f", dataset_path=str(first))  # the same features again: allowed
    with pytest.raises(UsageError, match=r"d_head_wise.npy exists and was made from other dataset items; it is kept"):
        extract(tiny, tmp_path / "f", dataset_path=str(second))
    assert paths["head_wise"].read_bytes() == before
    extract(tiny, tmp_path / "f", dataset_path=str(second), overwrite=True)
    assert paths["head_wise"].read_bytes() != before
    verify_against_data(FeatureSet(tmp_path / "f", "tiny", "d", dataset_path=str(second)))


def test_one_checkpoint_in_two_precisions_is_one_model(tiny, tokenizer):
    model, _ = tiny
    full = model_fingerprint(model, tokenizer)
    for dtype in (torch.bfloat16, torch.float16):
        half = make_tiny_model("llama", len(tokenizer)).to(dtype)
        assert differs(full, model_fingerprint(half, tokenizer)) is None
        assert differs(model_fingerprint(half, tokenizer), full) is None
    other = make_tiny_model("llama", len(tokenizer), seed=3).to(torch.bfloat16)
    assert differs(full, model_fingerprint(other, tokenizer)).startswith("other weights")
    assert np.isfinite([v for values in full["weights"]["values"].values() for v in values]).all()


# ----------------------------------------------------------------------------- content is identity (issue 33)

ARRAYS = ("head_wise", "layer_wise", "labels", "question_ids")


def extracted(tiny, tmp_path) -> FeatureSet:
    """A set save_features wrote from ITEMS in tmp_path/f (residual streams included)."""
    data = write_items(tmp_path / "data.jsonl", ITEMS)
    extract(tiny, tmp_path / "f", dataset_path=str(data))
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
def run_inputs(tmp_path_factory, tiny, tqa_path):
    """The `tiny` model as a folder, and its features of the first 6 questions."""
    model, tokenizer = tiny
    folder = tiny_model_folder(tmp_path_factory, "resume_model", "llama", tokenizer)
    features = tmp_path_factory.mktemp("resume_features")
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        save_features(model, tokenizer, build_prompt_set(dataset, tqa_path, limit=6), features, "tiny",
                      progress=False, limit=6)
    return folder, features


def test_resume_keeps_only_folds_of_the_same_bytes_and_records_what_was_read(run_inputs, tqa_path, tmp_path):
    model_folder, clean_features = run_inputs
    features = tmp_path / "features"
    shutil.copytree(clean_features, features)
    cfg = ValidationConfig(model_name="tiny", model_path=str(model_folder), features_dir=str(features),
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
    for path in clean_features.iterdir():
        shutil.copy(path, features / path.name)
    assert str(earlier_run_path(cfg)) == summary
    logged.clear()
    again = run_validation(cfg, progress=False, log=logged.append)
    assert again["json_path"] == summary
    assert [line for line in logged if "kept from" in line] == [
        f"Fold {fold}: kept from {summary} (same settings; delete that file to recompute)" for fold in range(2)]
    assert again["folds"] == clean["folds"]
    assert again["provenance"]["features_sha256"] == {str(p): sha256(p) for p in files}
