"""get_activations run as a user runs it, over what may stand at its outputs' names: a FIFO or a symbolic link leading
out of the features folder is refused in one line and kept, whatever --overwrite says; a features folder that is
itself a link (to a scratch disk, say) is written through. (write_local_text's --output over a FIFO, a device node
and a link: tests/test_cli_errors.py.)"""
import os
import subprocess
import sys

import numpy as np
import pytest

from iti.features import feature_path
from tests.conftest import REPO_ROOT, tiny_model_folder

SCRIPT = REPO_ROOT / "get_activations" / "get_activations.py"
MODEL, DATASET, LIMIT = "tiny", "tqa_mc2", 2


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory, tokenizer):
    return tiny_model_folder(tmp_path_factory, "tiny_llama", "llama", tokenizer)


def extract(model_folder, features_dir, tqa_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--model_name", MODEL, "--model_path", str(model_folder),
                           "--dataset_name", DATASET, "--limit", str(LIMIT), "--device", "cpu", "--features_dir",
                           str(features_dir), "--tqa_path", str(tqa_path), *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def output(features_dir, kind: str):
    return feature_path(features_dir, MODEL, DATASET, kind, LIMIT)


def fifo_at_the_labels(features_dir, elsewhere):
    os.mkfifo(output(features_dir, "labels"))
    return output(features_dir, "labels"), ("is a named pipe (FIFO), not a regular file; it is kept: give the path of "
                                            "a regular file or of none")


def link_out_at_the_activations(features_dir, elsewhere):
    (elsewhere / "mine.npy").write_bytes(b"months of work")
    output(features_dir, "head_wise").symlink_to(elsewhere / "mine.npy")
    return output(features_dir, "head_wise"), (f"is a symbolic link to {elsewhere / 'mine.npy'}, outside its folder; "
                                               "it is kept: give a path in the folder you mean to write")


@pytest.mark.parametrize("place", [fifo_at_the_labels, link_out_at_the_activations])
def test_a_special_file_at_an_output_name_is_refused_and_kept(place, tiny_llama_folder, tqa_path, tmp_path):
    features_dir, elsewhere = tmp_path / "features", tmp_path / "elsewhere"
    features_dir.mkdir()
    elsewhere.mkdir()
    standing, why = place(features_dir, elsewhere)
    before = os.lstat(standing)
    result = extract(tiny_llama_folder, features_dir, tqa_path, "--overwrite")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors == [f"error: output {standing} {why}"]
    after = os.lstat(standing)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert [p.name for p in features_dir.iterdir()] == [standing.name]
    assert [p.read_bytes() for p in elsewhere.iterdir()] in ([], [b"months of work"])


def test_a_features_folder_that_is_a_link_is_written_through(tiny_llama_folder, tqa_path, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "features").symlink_to(scratch)
    result = extract(tiny_llama_folder, tmp_path / "features", tqa_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "features").is_symlink()
    labels = np.load(output(scratch, "labels"))
    assert labels.shape == np.load(output(scratch, "question_ids")).shape and set(labels.tolist()) == {0, 1}
