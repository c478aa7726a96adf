"""What made a number: code version, library versions, device, the exact feature files read, model and options,
recorded in every validate_2fold summary so a result can be traced to the commit, data and settings behind it."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDED_PACKAGES = ("torch", "transformers", "pyvene", "numpy")


def git_state(repo: Path = REPO_ROOT) -> dict[str, str | bool | None]:
    """The checked-out commit and whether tracked files differ from it (None for both outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_device(device: str) -> str:
    """The device and, for a GPU, its name (the same code gives other float noise on other cards)."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.processor() or platform.machine()})"


def run_provenance(config: dict, features_read: dict[str, str], model_source: str, device: str) -> dict:
    """The record for a run's summary; `features_read`: the SHA-256 of each features file, as checked when the run
    read it (iti.features.checked_digests), not a hash of what lies there later."""
    return {
        "git": git_state(),
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in RECORDED_PACKAGES}},
        "device": describe_device(device),
        "features_sha256": dict(features_read),
        "model_source": model_source,
        "config": config,
    }
