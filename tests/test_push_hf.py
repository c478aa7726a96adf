"""validation/push_hf.py: --dry_run shows files and the model card without the network; clear one-line errors."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iti.head_shifts import ShiftProvenance
from tests.conftest import REPO_ROOT, family_config, make_shifts, make_tiny_model, model_from_config

SCRIPT = REPO_ROOT / "validation" / "push_hf.py"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROVENANCE = {"base_model": BASE, "dataset_name": "tqa_mc2", "activations_dataset": "tqa_gen_end_q",
              "val_ratio": 0.2, "limit": 40, "method": "center_of_mass", "seed": 7}


def run_script(*args, home, **env):
    """Run with no token anywhere (HF_HOME is empty) and a hub endpoint that refuses connections."""
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    clean.update(HF_HOME=str(home), HF_ENDPOINT="http://127.0.0.1:9", **env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=clean)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    from iti.bake import bake_head_shifts, save_baked_model

    root = tmp_path_factory.mktemp("push")
    model = make_tiny_model("llama", len(tokenizer))
    shifts = make_shifts(model, [(0, 1), (2, 0), (2, 3)], alpha=4.0)
    shifts.provenance = ShiftProvenance(**PROVENANCE)
    save_baked_model(bake_head_shifts(model, shifts), tokenizer, shifts, root / "baked")
    shifts.save(root / "shifts")
    qwen2 = model_from_config(family_config("qwen2", len(tokenizer)))
    qwen2_shifts = make_shifts(qwen2, [(0, 1), (1, 2)], alpha=4.0)
    qwen2_shifts.provenance = ShiftProvenance(**{**PROVENANCE, "base_model": "Qwen/Qwen2.5-0.5B-Instruct"})
    save_baked_model(bake_head_shifts(qwen2, qwen2_shifts), tokenizer, qwen2_shifts, root / "baked_qwen2")
    (root / "empty").mkdir()
    return root, shifts


def _one_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _card_heads(card: str) -> list[tuple[int, int]]:
    return [(int(l), int(h)) for l, h in re.findall(r"^\| (\d+) \| (\d+) \| [^|]+ \| [^|]+ \|$", card, re.M)]


def test_dry_run_of_a_baked_model(folders, tmp_path):
    root, shifts = folders
    result = run_script(str(root / "baked"), "--repo_id", "someone/honest_tiny", "--dry_run", home=tmp_path)
    assert result.returncode == 0, result.stderr
    listing, card = result.stdout.split("--- README.md ---\n")
    files = sorted(p.name for p in (root / "baked").iterdir())
    assert "model.safetensors" in files and "head_shifts.json" in files and "config.json" in files
    listed = re.findall(r"^  (\S+)  ", listing, re.M)
    assert sorted(listed) == sorted(files + ["README.md"])
    assert "to public repo someone/honest_tiny" in listing
    assert f"base_model: {BASE}" in card and "library_name: transformers" in card
    assert _card_heads(card) == shifts.head_list()
    assert "| alpha | 4 |" in card and "| seed | 7 |" in card and "tqa_mc2, first 40 questions" in card
    assert 'AutoModelForCausalLM.from_pretrained("someone/honest_tiny")' in card
    assert "| saved as | LlamaForCausalLM |" in card
    assert "hf download someone/honest_tiny --local-dir honest_tiny\n" in card
    assert "python llama.cpp/convert_hf_to_gguf.py honest_tiny --outtype f32 --outfile honest_tiny.gguf\n" in card
    assert not list(tmp_path.iterdir()), "a dry run must not write a token or cache"


def test_card_of_a_qwen2_bake_says_it_is_a_llama_checkpoint(folders, tmp_path):
    root, _ = folders
    result = run_script(str(root / "baked_qwen2"), "--repo_id", "someone/honest_qwen", "--dry_run", home=tmp_path)
    assert result.returncode == 0, result.stderr
    card = result.stdout.split("--- README.md ---\n")[1]
    assert "base_model: Qwen/Qwen2.5-0.5B-Instruct" in card and "| saved as | LlamaForCausalLM |" in card
    assert 'AutoModelForCausalLM.from_pretrained("someone/honest_qwen")' in card


def test_dry_run_of_head_shifts(folders, tmp_path):
    root, shifts = folders
    result = run_script(str(root / "shifts"), "--repo_id", "someone/tiny_shifts", "--private", "--dry_run",
                        home=tmp_path)
    assert result.returncode == 0, result.stderr
    listing, card = result.stdout.split("--- README.md ---\n")
    assert sorted(re.findall(r"^  (\S+)  ", listing, re.M)) == ["README.md", "head_shifts.json",
                                                                 "head_shifts.safetensors"]
    assert "head shifts" in listing and "private repo" in listing
    assert "library_name" not in card and _card_heads(card) == shifts.head_list()
    assert f'AutoModelForCausalLM.from_pretrained("{BASE}")' in card
    assert 'iti.applied(model, snapshot_download("someone/tiny_shifts")' in card
    assert "python validation/export_head_shifts.py --head_shifts FOLDER --output_dir pyvene_folder" in card
    assert 'shifted = pyvene.IntervenableModel.load("pyvene_folder", model)' in card


def test_card_of_a_pyvene_export_loads_it_with_pyvene_alone(folders, tmp_path):
    from iti.pyvene_export import export_pyvene

    root, shifts = folders
    export_pyvene(shifts, make_tiny_model("llama", 128).config, tmp_path / "export")
    result = run_script(str(tmp_path / "export"), "--repo_id", "someone/tiny_pyvene", "--dry_run",
                        home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    listing, card = result.stdout.split("--- README.md ---\n")
    assert "intkey_" in listing and "head shifts" in listing
    assert 'shifted = pyvene.IntervenableModel.load(snapshot_download("someone/tiny_pyvene"), model)' in card
    assert 'iti.applied(model, snapshot_download("someone/tiny_pyvene")' in card


def test_no_token_is_one_line(folders, tmp_path):
    root, _ = folders
    message = _one_error(run_script(str(root / "baked"), "--repo_id", "someone/honest_tiny", home=tmp_path))
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in message


def test_unreachable_hub_is_one_line(folders, tmp_path):
    root, _ = folders
    message = _one_error(run_script(str(root / "shifts"), "--repo_id", "someone/tiny_shifts", home=tmp_path,
                                    HF_TOKEN="hf_not_a_real_token"))
    assert "cannot reach the Hugging Face hub" in message


@pytest.mark.parametrize("folder, repo_id, expected", [
    ("empty", "someone/x", "holds neither a baked model"),
    ("missing", "someone/x", "does not exist; give an existing folder"),
    ("shifts", "not a/valid id", "--repo_id not a/valid id is not a valid repository id"),
])
def test_bad_input_is_one_line(folders, tmp_path, folder, repo_id, expected):
    root, _ = folders
    message = _one_error(run_script(str(root / folder), "--repo_id", repo_id, "--dry_run", home=tmp_path))
    assert expected in message


def test_card_shows_the_probe_report(folders, tmp_path):
    root, shifts = folders
    report = {"fold": 1, "train_items": 10, "train_rows": 40,
              "top_head": {"layer": 2, "head": 0, "val_accuracy": 0.8, "val_auc": 0.91},
              "best_layer": {"layer": 1, "val_accuracy": 0.75}, "selected_heads": {"val_accuracy": 0.7,
                                                                                   "test_accuracy": 0.65}}
    reported = shifts.scaled(shifts.alpha)
    reported.provenance = dataclasses.replace(reported.provenance, probe_report=report, dataset_path="/data/mine.jsonl",
                                              prompt_format="chat")
    reported.save(tmp_path / "reported")
    result = run_script(str(tmp_path / "reported"), "--repo_id", "someone/mine", "--dry_run", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    card = result.stdout.split("--- README.md ---\n")[1]
    assert "| 1 | 10 (40) | 0.700 | 0.650 | 4 | 3 | 1 (0.750) | L2H0 (0.910) |" in card
    assert "| prompt format | chat |" in card and "- truthfulqa" not in card


# ----------------------------------------------------------------------------- what goes: the files the bake wrote

def _copy_of_bake(folders, tmp_path):
    root, _ = folders
    return Path(shutil.copytree(root / "baked", tmp_path / "bake"))


def _recorded_names(folder) -> list[str]:
    return [entry["name"] for entry in json.loads((folder / "bake.json").read_text())["files"]]


def test_the_bake_record_lists_every_file_the_bake_wrote_with_its_bytes_digest(folders):
    root, _ = folders
    record = json.loads((root / "baked" / "bake.json").read_text())
    files = sorted(p.name for p in (root / "baked").iterdir() if p.name != "bake.json")
    assert [entry["name"] for entry in record["files"]] == files
    for entry in record["files"]:
        data = (root / "baked" / entry["name"]).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_stray_files_are_left_out_and_named_and_the_card_goes_with_the_bake(folders, tmp_path, monkeypatch):
    from iti import publish

    bake = _copy_of_bake(folders, tmp_path)
    (bake / "credentials.env").write_text("HF_TOKEN=hf_secret\n")
    (bake / "big.bin").write_bytes(b"\0" * 4096)
    (bake / "README.md").write_text("my own notes\n")
    (bake / "notes").mkdir()
    (bake / "notes" / "todo.txt").write_text("later\n")
    uploaded = [*_recorded_names(bake), "bake.json", "README.md"]
    left_out = "left out, not part of the bake: README.md, big.bin, credentials.env, notes/todo.txt"

    result = run_script(str(bake), "--repo_id", "someone/honest_tiny", "--dry_run", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("--- README.md ---\n")[0]
    assert sorted(re.findall(r"^  (\S+)  ", listing, re.M)) == sorted(uploaded)
    assert left_out in listing.splitlines() and "README.md  " in listing and "uploaded with the files" in listing

    class FakeHub:
        """Records the commit instead of sending it."""
        commits = []

        def __init__(self, token):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            pass

        def create_commit(self, repo_id, operations, commit_message):
            self.commits.append(operations)
            return type("Commit", (), {"commit_url": f"https://hub/{repo_id}"})()

    monkeypatch.setattr(publish, "HfApi", FakeHub)
    monkeypatch.setattr(publish, "get_token", lambda: "hf_fake")
    prepared = publish.prepare_upload(bake, "someone/honest_tiny")
    assert prepared.left_out_line() == left_out
    publish.upload(prepared, "someone/honest_tiny", private=False)
    (operations,) = FakeHub.commits
    assert sorted(op.path_in_repo for op in operations) == sorted(uploaded)
    sent = {op.path_in_repo: op.path_or_fileobj for op in operations}
    assert sent["README.md"] == prepared.card.encode() and b"my own notes" not in sent["README.md"]


@pytest.mark.parametrize("link", ["stray", "recorded"])
def test_a_symbolic_link_in_the_folder_is_refused(folders, tmp_path, link):
    bake = _copy_of_bake(folders, tmp_path)
    if link == "stray":
        (bake / "passwd").symlink_to("/etc/passwd")
    else:  # a file of the bake moved out and linked back: the same bytes, but an upload would follow the link
        (bake / "config.json").rename(tmp_path / "config.json")
        (bake / "config.json").symlink_to(tmp_path / "config.json")
    message = _one_error(run_script(str(bake), "--repo_id", "someone/honest_tiny", "--dry_run", home=tmp_path / "home"))
    assert f"{bake} holds a symbolic link, {bake}/" in message
    assert "nothing is uploaded from a folder with links" in message


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "head_shifts.json"])
def test_a_file_changed_since_the_bake_is_refused(folders, tmp_path, name):
    bake = _copy_of_bake(folders, tmp_path)
    data = bytearray((bake / name).read_bytes())
    data[-2] ^= 0x01  # the last bytes: weights, or the JSON's closing lines
    (bake / name).write_bytes(bytes(data))
    message = _one_error(run_script(str(bake), "--repo_id", "someone/honest_tiny", "--dry_run", home=tmp_path / "home"))
    assert f"baked model file {bake}/{name} is not the file that was written there" in message
    assert "bake it again with `python validation/edit_weight.py`" in message


def test_a_bake_without_its_record_is_refused_and_head_shifts_name_what_they_leave_out(folders, tmp_path):
    from iti.publish import prepare_upload

    bake = _copy_of_bake(folders, tmp_path)
    (bake / "bake.json").unlink()
    message = _one_error(run_script(str(bake), "--repo_id", "someone/honest_tiny", "--dry_run", home=tmp_path / "home"))
    assert "holds a baked model but no bake.json" in message
    root, _ = folders
    shifts = Path(shutil.copytree(root / "shifts", tmp_path / "shifts"))
    (shifts / "big.bin").write_bytes(b"\0" * 10)
    prepared = prepare_upload(shifts, "someone/tiny_shifts")
    assert [p.name for p in prepared.files] == ["head_shifts.safetensors", "head_shifts.json"]
    assert prepared.left_out_line() == "left out, not part of the head shifts: big.bin"
