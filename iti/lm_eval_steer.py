"""Head shifts as a steer file of lm-evaluation-harness's `steered` model (lm_eval/models/hf_steered.py).

lm-eval's `steered` model adds, at every position, a constant vector to the output of named modules, read from a
torch file mapping hookpoint -> {steering_vector, steering_coefficient, action, bias, head_index}; a hookpoint is a
module's name in `model.base_model.named_modules()`. Adding δ_l to layer l's o_proj input adds W_o·δ_l to its output
(docs/method.md §7), so one hookpoint per edited layer, the o_proj module, with W_o·δ_l computed in float64, gives
the function of the baked model: lm-eval rounds the vector once to the model's dtype, as the bake rounds its bias.
The file is a torch file only because lm-eval reads nothing else; we write it and never read it back.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import torch

from iti.constants import REPO_ROOT
from iti.errors import UsageError
from iti.files import atomic_write, staged_folder, write_text
from iti.geometry import head_geometry
from iti.head_shifts import HeadShifts
from iti.models import get_o_proj

STEER_FILE = "steer.pt"
README_FILE = "README.md"
# Our task YAMLs (TruthfulQA from the local copy); lm-eval finds them through --include_path.
TASKS_DIR = REPO_ROOT / "validation" / "lm_eval_tasks"
# lm-eval's truthfulqa_mc1 and _mc2 (its prompt and metric code) on the answers validate_2fold scores, in MC order:
# the tasks of TASKS_DIR whose MC1/MC2 can be compared with ours question by question.
REFERENCE_TASKS = ("truthfulqa_refs_mc1", "truthfulqa_refs_mc2")


def hookpoint_of(model, module: torch.nn.Module) -> str:
    """The name lm-eval hooks `module` by: its name among `model.base_model`'s modules."""
    for name, candidate in model.base_model.named_modules():
        if candidate is module:
            return name
    raise UsageError(f"{type(model).__name__}'s attention output projection is not inside its base model, where "
                     "lm-eval's steered model looks for hookpoints; export for pyvene instead")


def output_shift(o_proj: torch.nn.Module, offset) -> torch.Tensor:
    """W_o·δ in float64: what adding δ to the module's input adds to its output (a Linear's weight is [out, in],
    a transformers Conv1D's, as GPT-2's attention output has, [in, out])."""
    delta = torch.as_tensor(offset, dtype=torch.float64, device=o_proj.weight.device)
    if isinstance(o_proj, torch.nn.Linear):
        return (o_proj.weight.double() @ delta).cpu()
    if type(o_proj).__name__ == "Conv1D":
        return (delta @ o_proj.weight.double()).cpu()
    raise UsageError(f"the attention output projection is a {type(o_proj).__name__}, not a linear layer, so a head "
                     "shift is no constant on its output; export for pyvene instead")


def steer_vectors(shifts: HeadShifts, model) -> dict[str, dict]:
    """lm-eval's steer config for `shifts` on `model`: per edited layer, its o_proj's hookpoint -> W_o·δ_l (float64
    [hidden], which lm-eval casts to the model's dtype and adds at every position)."""
    shifts.check_geometry(head_geometry(model.config))
    return {hookpoint_of(model, get_o_proj(model, layer)): {
                "steering_vector": output_shift(get_o_proj(model, layer), offset),
                "steering_coefficient": 1.0, "action": "add", "bias": None, "head_index": None}
            for layer, offset in sorted(shifts.layer_offsets().items())}


def write_steer_file(shifts: HeadShifts, model, path: str | os.PathLike) -> Path:
    """The steer file for `shifts` on `model` at `path`, written under a temporary name and renamed."""
    vectors = steer_vectors(shifts, model)
    return atomic_write(Path(path), lambda tmp: torch.save(vectors, tmp), "lm-eval steer file")


def lm_eval_command(model_source: str, steer_path: str | os.PathLike, tasks: str = "truthfulqa_local_mc2") -> str:
    """The lm_eval command that evaluates `model_source` with the steer file on `tasks` (ours need --include_path)."""
    model_args = f"pretrained={model_source},steer_path={steer_path}"
    return (f"lm_eval --model steered --model_args {shlex.quote(model_args)} --tasks {tasks} "
            f"--include_path {shlex.quote(str(TASKS_DIR))}")


def export_lm_eval(shifts: HeadShifts, model, model_source: str, folder: str | os.PathLike) -> Path:
    """A folder with the steer file, a README holding the lm_eval command and the head shifts themselves (so that
    what was exported stays known); it appears whole or not at all and replaces an earlier one."""
    target = Path(folder)
    steer_path = target.resolve() / STEER_FILE
    with staged_folder(target, replace=True) as staging:
        write_steer_file(shifts, model, staging / STEER_FILE)
        write_text(staging / README_FILE, f"# {shifts.k} head shifts as an lm-evaluation-harness steer file\n\n"
                   f"Evaluate {model_source} with them (offline: HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1) on any "
                   f"lm-eval task list:\n\n    {lm_eval_command(model_source, steer_path)}\n")
        shifts.save(staging)
    return target
