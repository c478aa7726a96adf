"""Export to pyvene's saved format, `pyvene.IntervenableModel.load` on its own, and import back."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from iti.errors import UsageError
from iti.geometry import HeadGeometry, head_geometry
from iti.head_shifts import METADATA_FILE, TENSORS_FILE, HeadShifts
from iti.intervenable import pv
from iti.intervention import ShiftedModel
from iti.pyvene_export import export_pyvene, import_pyvene
from tests.conftest import (REPO_ROOT, family_config, logit_tolerance, make_shifts, model_from_config,
                            right_padded_batch, tiny_model_folder)

SCRIPT = REPO_ROOT / "validation" / "export_head_shifts.py"


@pytest.fixture
def exported(tiny, tmp_path):
    model, tokenizer = tiny
    shifts = make_shifts(model, alpha=4.0)
    folder = export_pyvene(shifts, model.config, tmp_path / "export")
    return model, tokenizer, shifts, folder


def test_pyvene_load_alone_applies_our_shifts(exported):
    model, tokenizer, shifts, folder = exported
    batch = tokenizer(["Q: Is the sky green? A: No.", "Q: Why? A: Light."], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    loaded = pv.IntervenableModel.load(str(folder), model)
    ours = ShiftedModel(model, shifts)
    # Every position (a full-sequence call, as a baked model shifts), on an unpadded row.
    _, theirs = loaded({"input_ids": ids[:1, :int(mask[0].sum())]})
    mine = ours(ids[:1, :int(mask[0].sum())])
    torch.testing.assert_close(theirs.logits, mine.logits, rtol=0, atol=1e-5)
    plain = model(input_ids=ids[:1, :int(mask[0].sum())]).logits
    assert (theirs.logits - plain).abs().max() > 1e-2  # the shift does something
    # One chosen position per row (here each row's last real token).
    last = mask.sum(1) - 1
    positions = [[[int(p)] for p in last]] * len(loaded.interventions)
    _, theirs = loaded({"input_ids": ids, "attention_mask": mask}, unit_locations={"base": positions})
    shift_mask = torch.zeros_like(mask)
    shift_mask[torch.arange(len(last)), last] = 1
    mine = ours(ids, mask, shift_mask=shift_mask)
    torch.testing.assert_close(theirs.logits[mask.bool()], mine.logits[mask.bool()], rtol=0, atol=1e-5)


def test_state_files_are_plain_tensors(exported):
    _, _, shifts, folder = exported
    config = json.loads((folder / "config.json").read_text())
    assert len(config["sorted_keys"]) == len(set(shifts.layers.tolist()))
    for key in config["sorted_keys"]:
        state = torch.load(folder / f"intkey_{key}.bin", weights_only=True)
        assert set(state) >= {"source_representation"}


def test_import_gives_the_shifts_back(exported):
    model, _, shifts, folder = exported
    geometry = head_geometry(model.config)
    back = import_pyvene(folder, geometry)
    assert back.head_list() == shifts.head_list() and back.alpha == shifts.alpha
    np.testing.assert_array_equal(back.directions, shifts.directions)
    np.testing.assert_array_equal(back.sigmas, shifts.sigmas)
    # A folder pyvene wrote alone (no HeadShifts files): the same per-layer shifts, split into heads.
    (folder / METADATA_FILE).unlink()
    (folder / TENSORS_FILE).unlink()
    split = import_pyvene(folder, geometry)
    assert sorted(split.head_list()) == sorted(shifts.head_list())
    for layer, offset in shifts.layer_offsets().items():
        np.testing.assert_allclose(split.layer_offsets()[layer], offset, rtol=1e-5, atol=1e-6)


def test_import_refuses_another_geometry_and_foreign_folders(exported, tmp_path):
    model, _, shifts, folder = exported
    geometry = head_geometry(model.config)
    other = HeadGeometry(geometry.num_layers, geometry.num_heads * 2, geometry.head_dim // 2)
    with pytest.raises(UsageError, match="made for"):
        import_pyvene(folder, other)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a pyvene export"):
        export_pyvene(shifts, model.config, tmp_path / "notes")
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="no pyvene export"):
        import_pyvene(tmp_path / "notes", geometry)


def test_script_refuses_shifts_of_another_model_unless_told(tmp_path_factory, tokenizer, tmp_path):
    from iti.models import load_model

    made_for = tiny_model_folder(tmp_path_factory, "made_for", "gqa", tokenizer)
    other = tiny_model_folder(tmp_path_factory, "other", "gqa", tokenizer, seed=1)
    model, _ = load_model(str(made_for), device="cpu")
    shifts = make_shifts(model)
    shifts.provenance.model_source = str(made_for)
    shifts.save(tmp_path / "shifts")

    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPT), "--head_shifts", str(tmp_path / "shifts"), *args],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)

    refused = run("--model_path", str(other), "--output_dir", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"made for {made_for}, not {other}" in refused.stderr and not (tmp_path / "refused").exists()
    allowed = run("--model_path", str(other), "--output_dir", str(tmp_path / "export"), "--allow_other_model")
    assert allowed.returncode == 0, allowed.stderr
    exported = run("--model_path", str(made_for), "--output_dir", str(tmp_path / "export"), "--overwrite")
    assert exported.returncode == 0, exported.stderr
    assert import_pyvene(tmp_path / "export", head_geometry(model.config)).head_list() == shifts.head_list()


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma2"])
def test_pyvene_load_of_other_families_equals_ours_at_every_position(family, tmp_path):
    model = model_from_config(family_config(family))
    shifts = make_shifts(model, alpha=4.0)
    folder = export_pyvene(shifts, model.config, tmp_path / "export")
    ids, mask = right_padded_batch(model.config.vocab_size)
    loaded = pv.IntervenableModel.load(str(folder), model)
    with torch.no_grad():
        _, theirs = loaded({"input_ids": ids, "attention_mask": mask})
        mine = ShiftedModel(model, shifts)(ids, mask, shift_mask=torch.ones_like(ids))
        plain = model(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    tolerance = logit_tolerance(model, mine.logits[real])
    torch.testing.assert_close(theirs.logits[real], mine.logits[real], rtol=0, atol=tolerance)
    assert (theirs.logits[real] - plain.logits[real]).abs().max() > 100 * tolerance


@pytest.fixture
def shifts_of_a_saved_qwen2(tmp_path, tokenizer):
    """Head shifts of a tiny Qwen2 saved as a model folder, recording that folder as their model."""
    model_dir = tmp_path / "qwen2"
    model = model_from_config(family_config("qwen2", len(tokenizer)))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    shifts = make_shifts(model, alpha=4.0)
    shifts.provenance.model_source = str(model_dir)
    shifts.save(tmp_path / "shifts")
    return model, model_dir, shifts


def run_export(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def test_export_from_a_head_shift_folder_alone_uses_the_model_it_records(shifts_of_a_saved_qwen2, tmp_path):
    model, model_dir, shifts = shifts_of_a_saved_qwen2
    result = run_export("--head_shifts", str(tmp_path / "shifts"), "--output_dir", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr
    assert f"layers of {model_dir} ->" in result.stdout
    ids = torch.tensor([list(range(3, 30, 2))])
    loaded = pv.IntervenableModel.load(str(tmp_path / "export"), model)
    with torch.no_grad():
        _, theirs = loaded({"input_ids": ids})
        mine = ShiftedModel(model, shifts)(ids)
    torch.testing.assert_close(theirs.logits, mine.logits, rtol=0, atol=logit_tolerance(model, mine.logits))
    imported = run_export("--import_from", str(tmp_path / "export"), "--output_dir", str(tmp_path / "imported"))
    assert imported.returncode == 0, imported.stderr
    back = HeadShifts.load(tmp_path / "imported")
    assert back.head_list() == shifts.head_list() and back.model_source == str(model_dir)


def test_export_refuses_shifts_of_another_geometry_in_one_line_and_writes_nothing(shifts_of_a_saved_qwen2, tmp_path,
                                                                                  tmp_path_factory, tokenizer):
    other = tiny_model_folder(tmp_path_factory, "other", "llama", tokenizer)
    result = run_export("--head_shifts", str(tmp_path / "shifts"), "--output_dir", str(tmp_path / "export"),
                        "--model_path", str(other), "--allow_other_model")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "head shifts were made for 2×4×8 (layers×heads×head_dim) but the model has 3×4×12" in errors[0]
    assert not (tmp_path / "export").exists()
