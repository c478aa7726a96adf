"""Provenance: every field present, the features' digests as the run read them, git state read from git."""
import shutil
import subprocess

import numpy as np
import pytest

from iti.provenance import RECORDED_PACKAGES, git_state, run_provenance


def test_fields_present_and_the_digests_recorded_are_those_read(tmp_path):
    features = tmp_path / "m_tqa_mc2_head_wise.npy"
    read = {str(features): "ab" * 32}
    config = {"alpha": 15.0, "num_heads": 48, "seed": 1}
    record = run_provenance(config, read, "org/model", "cpu")

    assert set(record) == {"git", "versions", "device", "features_sha256", "model_source", "config"}
    assert set(record["git"]) == {"commit", "dirty"}
    assert set(RECORDED_PACKAGES) <= set(record["versions"])
    assert record["versions"]["numpy"] == np.__version__
    assert record["device"].startswith("cpu") and record["model_source"] == "org/model"
    assert record["config"] == config
    assert record["features_sha256"] == read  # what the run checked, never a hash of what lies there afterwards


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_and_dirty_flag(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    commit = git("rev-parse", "HEAD").strip()
    assert git_state(tmp_path) == {"commit": commit, "dirty": False}
    (tmp_path / "untracked.npy").write_text("not part of the code")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path) == {"commit": commit, "dirty": True}
    assert git_state(tmp_path / "nowhere") == {"commit": None, "dirty": None}
