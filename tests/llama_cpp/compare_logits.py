"""A baked model in llama.cpp against transformers: convert it to an f32 GGUF with llama.cpp's converter,
then print, per prompt, how far llama.cpp's next-token logits sit from transformers' and how far the
bake moved them from the unbaked model's. tests/test_llama_cpp.py asserts the same with these helpers.

bash tests/llama_cpp/install_llama_cpp.sh      # once: llama_cpp and its converter
python tests/llama_cpp/compare_logits.py validation/results_dump/edited_models_dump/FOLDER
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from iti.errors import UsageError  # noqa: E402

PROMPTS = ("Q: What happens if you crack your knuckles a lot?\nA:", "Q: Are bats blind?\nA:", "The capital of France is")
INSTALL = "bash tests/llama_cpp/install_llama_cpp.sh"


def converter_path() -> Path:
    """Where install_llama_cpp.sh puts llama.cpp's HF-to-GGUF converter."""
    from iti.options import cache_folder

    return cache_folder() / "llama.cpp" / "convert_hf_to_gguf.py"


def convert_to_f32_gguf(converter: Path, folder: Path, out: Path) -> Path:
    result = subprocess.run([sys.executable, str(converter), str(folder), "--outtype", "f32", "--outfile", str(out)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed on {folder}:\n{result.stderr[-2000:]}")
    return out


def gguf_tensor_names(gguf_file: Path) -> list[str]:
    from gguf import GGUFReader

    return [tensor.name for tensor in GGUFReader(str(gguf_file)).tensors]


def f32_gguf_tolerance(config, logits: np.ndarray) -> float:
    """How far llama.cpp's float32 logits may sit from transformers' float32 logits.

    The two sum in different orders, so each float32 dot product of n terms differs by rounding
    errors that add like a random walk, about √n·ε of the logits' scale; that gap arises in each
    layer's widest sum. (The KV cache is kept in float32 too: llama.cpp's default float16 cache adds
    about 1e-2 on SmolLM2.)
    """
    from iti.geometry import head_geometry

    geo = head_geometry(config)
    widest = max(config.hidden_size, config.intermediate_size, geo.width)
    return float(np.finfo(np.float32).eps) * math.sqrt(widest) * geo.num_layers * float(np.abs(logits).max())


def llama_cpp_logits(gguf_file: Path, prompts_ids: list[list[int]]) -> list[np.ndarray]:
    """Logits at every position of each prompt, from llama.cpp on one thread with a float32 KV cache."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_file), n_ctx=256, n_threads=1, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        logits = []
        for ids in prompts_ids:
            llm.reset()
            llm.eval(ids)
            logits.append(np.array(llm.scores[:len(ids)], dtype=np.float64))
        return logits
    finally:
        llm.close()


def transformers_logits(model, prompts_ids: list[list[int]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0].double().numpy() for ids in prompts_ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baked", help="a folder made by validation/edit_weight.py")
    args = parser.parse_args()

    import importlib.util

    from iti.head_shifts import HeadShifts
    from iti.models import load_model

    if importlib.util.find_spec("llama_cpp") is None:
        raise UsageError(f"llama_cpp is not importable; build it with `{INSTALL}`")
    converter = converter_path()
    if not converter.is_file():
        raise UsageError(f"llama.cpp's converter is not at {converter}; `{INSTALL}` puts it there")
    unbaked_source = HeadShifts.load(args.baked).model_source
    if unbaked_source is None:
        raise UsageError(f"the head shifts in {args.baked} record no model to compare the bake with")
    baked, tokenizer = load_model(args.baked, device="cpu", dtype="float32")
    unbaked, _ = load_model(unbaked_source, device="cpu", dtype="float32")
    prompts_ids = [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]
    with tempfile.TemporaryDirectory() as scratch:
        gguf_file = convert_to_f32_gguf(converter, Path(args.baked), Path(scratch) / "baked.f32.gguf")
        print(f"{len(gguf_tensor_names(gguf_file))} tensors in the f32 GGUF of {args.baked}")
        theirs = llama_cpp_logits(gguf_file, prompts_ids)
    ours, plain = transformers_logits(baked, prompts_ids), transformers_logits(unbaked, prompts_ids)
    print("tokens  |llama.cpp - baked|  |baked - unbaked|  max |logit|  tolerance  (next token; all positions)")
    for ids, cpp, mine, before in zip(prompts_ids, theirs, ours, plain):
        print(f"{len(ids):6d}  {np.abs(cpp[-1] - mine[-1]).max():19.2e}  {np.abs(mine[-1] - before[-1]).max():17.3f}  "
              f"{np.abs(mine[-1]).max():11.1f}  {f32_gguf_tolerance(baked.config, mine):9.1e}  "
              f"(all: {np.abs(cpp - mine).max():.2e}, {np.abs(mine - before).max():.3f})")


if __name__ == "__main__":
    from iti.cli import run_main

    run_main(main)
