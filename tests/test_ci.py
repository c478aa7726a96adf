"""CI's verdict: a run that collects no test fails, and a missing TruthfulQA copy fails under CI instead of skipping."""
import shutil
import subprocess

import pytest

import tests.conftest as conftest

CI_SCRIPT = conftest.REPO_ROOT / ".ci" / "run"


def test_ci_fails_when_pytest_collects_nothing(tmp_path):
    (tmp_path / ".ci").mkdir()
    shutil.copy(CI_SCRIPT, tmp_path / ".ci" / "run")
    # Installation and the local SLURM are not what this checks: stand-ins that succeed.
    (tmp_path / "setup.sh").write_text("true\n")
    (tmp_path / "tests" / "slurm").mkdir(parents=True)
    for script in ("start_local_slurm.sh", "stop_local_slurm.sh"):
        (tmp_path / "tests" / "slurm" / script).write_text("true\n")
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=300)
    assert "no tests ran" in done.stdout
    assert done.returncode == 5


def test_missing_truthfulqa_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: no local TruthfulQA"):
        conftest._tqa_dir()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no local TruthfulQA"):
        conftest._tqa_dir()
