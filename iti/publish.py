"""Publishing a baked model folder (validation/edit_weight.py's) or a head-shift folder on the Hugging Face hub, with
a generated model card (base model, heads, α, data, seed, how to load) in place of any README.md.

What goes is what was made, nothing else: a bake's files are those its record (bake.json) lists, each checked to hold
the bytes recorded; head shifts are their two files (and an export's pyvene files). Every other file in the folder is
left out and named; a symbolic link anywhere in it is refused, as it may lead to any file of the machine."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from iti.bake_folders import BAKE_RECORD, EDIT_WEIGHT, BakeRecord, check_bake, readable_size
from iti.errors import UsageError
from iti.files import read_json
from iti.head_shifts import METADATA_FILE, TENSORS_FILE, HeadShifts
from iti.pyvene_export import PYVENE_CONFIG, REEXPORT, is_export
from iti.report import report_table

MODEL, HEAD_SHIFTS = "model", "head_shifts"
CARD = "README.md"


@dataclass(frozen=True)
class Upload:
    """What a push sends: the files the bake or the head shifts consist of and the card written for them; and the
    names of the folder's other files, which it leaves out."""
    folder: Path
    kind: str
    files: list[Path]
    left_out: list[str]
    card: str

    def left_out_line(self) -> str | None:
        """The one line that names every file of the folder not uploaded, if any."""
        if not self.left_out:
            return None
        made = "the bake" if self.kind == MODEL else "the head shifts"
        return f"left out, not part of {made}: {', '.join(self.left_out)}"

    def dry_run_report(self, repo_id: str, private: bool) -> str:
        """Exactly the files that would be uploaded, with their sizes, the card among them; the files left out."""
        total = sum(p.stat().st_size for p in self.files) + len(self.card.encode())
        visibility = "private" if private else "public"
        lines = [f"dry run: would upload {self.kind.replace('_', ' ')} {self.folder} to {visibility} repo {repo_id} "
                 f"({len(self.files) + 1} files, {readable_size(total)}):"]
        lines += [f"  {path.relative_to(self.folder).as_posix()}  {readable_size(path.stat().st_size)}"
                  for path in self.files]
        lines += [f"  {CARD}  {readable_size(len(self.card.encode()))} (the model card this command writes, shown "
                  "below; uploaded with the files)"]
        lines += [line for line in [self.left_out_line()] if line]
        return "\n".join([*lines, f"--- {CARD} ---", self.card])


def prepare_upload(folder: Path, repo_id: str) -> Upload:
    """The folder's kind, the files that make it (checked against the bake's record), the other files and the card;
    a UsageError for a folder that is neither a bake nor head shifts, holds a symbolic link, or whose bake files
    differ from the record."""
    kind = folder_kind(folder)
    present = files_in(folder)
    record = check_bake(folder) if kind == MODEL else None  # the bytes, before the card reads any of them
    card = model_card(kind, repo_id, HeadShifts.load(folder), folder)
    made = made_files(folder, kind, record)
    missing = [name for name in made if name not in present]
    if missing:
        raise UsageError(f"{folder} lacks {', '.join(missing)}, which the {kind.replace('_', ' ')} consists of; make "
                         "the folder again")
    return Upload(folder, kind, [folder / name for name in made], sorted(set(present) - set(made)), card)


def folder_kind(folder: Path) -> str:
    has_shifts = (folder / METADATA_FILE).is_file() and (folder / TENSORS_FILE).is_file()
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if (folder / "config.json").is_file() and has_weights:
        if not has_shifts:
            raise UsageError(f"{folder} holds a model but no {METADATA_FILE}, so no card can describe its shifts; "
                             "push folders made by validation/edit_weight.py")
        return MODEL
    if has_shifts:
        return HEAD_SHIFTS
    raise UsageError(f"{folder} holds neither a baked model (config.json, model.safetensors, {METADATA_FILE}) nor "
                     f"head shifts ({METADATA_FILE}, {TENSORS_FILE}); make one with `python validation/edit_weight.py`")


def files_in(folder: Path) -> list[str]:
    """Every file under `folder` (relative POSIX names); a UsageError naming the first symbolic link in it."""
    names, links = [], []
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root, name)
            if path.is_symlink():
                links.append(path)
            elif name in files:
                names.append(path.relative_to(folder).as_posix())
    if links:
        more = f" and {len(links) - 1} more" if len(links) > 1 else ""
        raise UsageError(f"{folder} holds a symbolic link, {links[0]} -> {os.readlink(links[0])}{more}; nothing is "
                         "uploaded from a folder with links, which may lead to any file of this machine: remove it "
                         "(or put the file itself there if it belongs to the upload)")
    return sorted(names)


def made_files(folder: Path, kind: str, record: BakeRecord | None) -> list[str]:
    """The files the bake wrote (those its checked `record` lists, then the record itself); or the head shifts' two
    files, and a pyvene export's config and state files."""
    if kind == MODEL:
        if record is None:
            raise UsageError(f"{folder} holds a baked model but no {BAKE_RECORD}, the list of the files its bake "
                             f"wrote (bakes before it recorded none), so what belongs to the upload is unknown; bake "
                             f"it again with {EDIT_WEIGHT}")
        return [entry.name for entry in record.files] + [BAKE_RECORD]
    files = [TENSORS_FILE, METADATA_FILE]
    if is_export(folder):
        config = read_json(folder / PYVENE_CONFIG, "pyvene config", REEXPORT)
        files += [PYVENE_CONFIG, *(f"intkey_{key}.bin" for key in config.get("sorted_keys", []))]
    return files


def saved_architecture(folder: Path) -> str:
    """The model class a baked folder's config.json names (a Qwen2 or Mistral bake is a Llama checkpoint)."""
    path = folder / "config.json"
    remake = "bake the model again with validation/edit_weight.py"
    config = read_json(path, "model config", remake)
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(config, dict) or not (architectures is None or isinstance(architectures, list)
                                            and all(isinstance(name, str) for name in architectures)):
        raise UsageError(f"{path} is not a model config (a JSON object whose architectures are a list of class "
                         f"names); {remake}")
    return ", ".join(architectures or ["unknown"])


def model_card(kind: str, repo_id: str, shifts, folder: Path) -> str:
    p = shifts.provenance
    base = p.base_model
    heads = "K heads drawn at random" if p.method == "random" else "the K heads of highest probe validation accuracy"
    limit = f", first {p.limit} questions" if p.limit else ""
    header = ["---", *([f"base_model: {base}"] if base else []),
              *(["library_name: transformers"] if kind == MODEL else []), "tags:", "- inference-time-intervention",
              *([] if p.dataset_path else ["- truthfulqa"]), "---"]
    what = (
        "a model with Inference-Time Intervention (ITI; Li et al., NeurIPS 2023) baked into its weights: each edited "
        "layer's attention output projection carries the bias W_o·δ_l, which equals adding the head shifts α·σ·θ to its "
        "input. The shift acts at every position, the prompt's included. The head shifts themselves are in "
        "head_shifts.json / head_shifts.safetensors, to apply at run time at another α."
        if kind == MODEL else
        "Inference-Time Intervention (ITI; Li et al., NeurIPS 2023) head shifts: per selected attention head a unit "
        "direction θ and spread σ; at run time α·σ·θ is added to that head's slice of the attention output projection's "
        "input.")
    rows = [
        ("base model", base or p.model_source or "unknown"),
        *([("saved as", saved_architecture(folder))] if kind == MODEL else []),
        ("heads shifted (K)", str(shifts.k)),
        ("alpha", f"{shifts.alpha:g}"),
        ("head choice", heads),
        ("directions", p.method or "unknown"),
        ("probing data", f"{p.dataset_name or 'unknown'}{limit}, validation ratio {p.val_ratio or '?'}"),
        ("prompt format", p.prompt_format or "raw"),
        ("spread (σ) data", p.activations_dataset or "unknown"),
        ("seed", "unknown" if p.seed is None else str(p.seed)),
        ("geometry", f"{shifts.num_layers} layers x {shifts.num_heads} heads x head_dim {shifts.head_dim}"),
    ]
    lines = header + ["", f"# {repo_id.split('/')[-1]}", "", f"This is {what}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += probe_report_section(shifts)
    lines += ["", "## Heads", "", "| layer | head | σ | probe validation accuracy |", "|---|---|---|---|"]
    lines += [f"| {l} | {h} | {s:.4g} | {a:.3f} |"
              for l, h, s, a in zip(shifts.layers, shifts.heads, shifts.sigmas, shifts.probe_accuracies)]
    lines += ["", "## How to load", ""]
    lines += baked_model_usage(repo_id) if kind == MODEL else head_shift_usage(repo_id, base or "BASE_MODEL", folder)
    return "\n".join(lines)


def baked_model_usage(repo_id: str) -> list[str]:
    """transformers' loading code, and the llama.cpp conversion that keeps the bias tensors."""
    local = repo_id.split("/")[-1]
    return ["With transformers (an ordinary checkpoint: no extra code):", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", "",
            "In llama.cpp: convert with llama.cpp's own converter, which keeps the bias tensors:", "",
            "```bash", f"hf download {repo_id} --local-dir {local}",
            f"python llama.cpp/convert_hf_to_gguf.py {local} --outtype f32 --outfile {local}.gguf", "```", ""]


def head_shift_usage(repo_id: str, base: str, folder: Path) -> list[str]:
    """pyvene alone (this folder's pyvene files, or an export of it), and this project's loader."""
    if is_export(folder):
        pyvene = ["# pyvene alone: this repository holds pyvene's IntervenableModel.save files",
                  f'shifted = pyvene.IntervenableModel.load(snapshot_download("{repo_id}"), model)',
                  "_, outputs = shifted({\"input_ids\": input_ids})  # every position; unit_locations picks positions"]
    else:
        pyvene = ["# pyvene: write its files first, with iti's exporter, from FOLDER = snapshot_download(...) below:",
                  "#   python validation/export_head_shifts.py --head_shifts FOLDER --output_dir pyvene_folder",
                  'shifted = pyvene.IntervenableModel.load("pyvene_folder", model)']
    return ["```python", "import pyvene", "from huggingface_hub import snapshot_download",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{base}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")', "", *pyvene, "",
            "# or with this project (iti) installed: pip install -e .",
            "import iti", "",
            f'with iti.applied(model, snapshot_download("{repo_id}"), positions="generation"):  # alpha=... rescales',
            "    tokens = model.generate(**inputs, max_new_tokens=50)  # the paper's schedule; default: every position",
            "```", ""]


def probe_report_section(shifts) -> list[str]:
    """The probe report table (docs/method.md §9) that validate_2fold and edit_weight store with the shifts, if any."""
    report = shifts.provenance.probe_report
    if not report:
        return []
    return ["", "## Probe report", "",
            "Training samples: items (rows) the probes were fitted on. Validation and test accuracy: mean accuracy of "
            "the selected heads' probes (test: the fold's held-out items; a baked model has none). Best layer: a "
            "probe on each layer's residual stream, ranked by validation accuracy. Top head: highest validation "
            "accuracy, with its validation ROC AUC.", "",
            report_table([report], shifts.alpha, shifts.k)]


def upload(prepared: Upload, repo_id: str, private: bool) -> str:
    """Create the repository if needed and commit the files and the card in one commit; its URL."""
    token = get_token()
    if not token:
        raise UsageError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then run this again "
                         "(or add --dry_run to see what would be uploaded)")
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(prepared.folder).as_posix(), path_or_fileobj=str(p))
                  for p in prepared.files]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=prepared.card.encode()))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=f"Upload ITI {prepared.kind.replace('_', ' ')}")
    except HfHubHTTPError as err:
        raise UsageError(f"the hub refused the upload to {repo_id}: {_first_line(err)}; check the token's write "
                         "access and the repo id") from err
    except OfflineModeIsEnabled as err:
        raise UsageError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it and run this again") from err
    except Exception as err:
        if not _is_network_error(err):
            raise
        raise UsageError(f"cannot reach the Hugging Face hub ({_first_line(err)}); check the network "
                         "(or HF_ENDPOINT) and run this again") from err
    return commit.commit_url


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_network_error(err: Exception) -> bool:
    # huggingface_hub's HTTP client has been requests, httpx and httpx2; match any of their transport errors.
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
