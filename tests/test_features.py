"""Features know what made them: the record get_activations writes, and every way a set can be the wrong one
(another model, an edited dataset, a renamed subset, another prompt format) refused in one line; features of
a name made differently are never replaced without --overwrite."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from iti.activations import save_features
from iti.data import build_prompt_set
from iti.errors import UsageError
from iti.features import FeatureSet, feature_path, read_record, verify_against_data
from iti.fingerprint import differs, model_fingerprint
from iti.geometry import head_geometry
from iti.records import record_json
from tests.conftest import make_tiny_model

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
