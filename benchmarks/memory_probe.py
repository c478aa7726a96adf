"""Peak memory of extracting tqa_mc2 features, measured in a process of its own (bench_pipeline.py --memory runs it).

python -m benchmarks.memory_probe --source FOLDER [--device cpu] [--dtype auto] [--batch_size 16]
                                  [--tqa_path DIR] [--limit N] [--random_llama2_7b [--random_layers N]]

Prints one JSON line: the rows, the model's bytes, the extraction's seconds, resident memory from
/proc/self/status after the imports, after loading the model, at its peak while extracting (sampled
every 20 ms) and over the process's lifetime (VmHWM), the GPU's peak allocation and the bytes of
the feature files written (to a temporary folder, removed afterwards). With --random_llama2_7b the
model is the random LLaMA-2-7B-shaped one of the timed stages and --source supplies its tokenizer.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time

import torch

from benchmarks.models import model_bytes, random_llama
from iti.activations import save_features
from iti.cli import ArgumentParser, run_main
from iti.data import build_prompt_set
from iti.models import load_model, load_tokenizer

STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
SAMPLE_EVERY_S = 0.02


def memory_status() -> dict[str, int]:
    """This process's resident memory figures, in bytes."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                fields[key] = int(value.split()[0]) * 1024
    return fields


class PeakSampler:
    """The largest value of each memory figure while the `with` block runs, sampled on a thread."""

    def __init__(self, start: dict[str, int]):
        self.peak = dict(start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for key, value in memory_status().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            time.sleep(SAMPLE_EVERY_S)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def parse_args(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--source", required=True, help="model folder, hub id or .gguf file (the tokenizer's, "
                                                         "with --random_llama2_7b)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--tqa_path", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N questions (default: all)")
    parser.add_argument("--random_llama2_7b", action="store_true")
    parser.add_argument("--random_layers", type=int, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    after_imports = memory_status()
    if args.random_llama2_7b:
        tokenizer = load_tokenizer(args.source)
        model = random_llama(tokenizer, args.device, args.dtype, args.random_layers)
    else:
        model, tokenizer = load_model(args.source, args.device, args.dtype)
    prompt_set = build_prompt_set("tqa_mc2", args.tqa_path, args.limit)
    after_load = memory_status()
    with tempfile.TemporaryDirectory() as folder, PeakSampler(after_load) as sampler:
        began = time.perf_counter()
        paths = save_features(model, tokenizer, prompt_set, folder, "memory_probe", args.batch_size, progress=False)
        seconds = time.perf_counter() - began
        output_bytes = sum(path.stat().st_size for path in paths.values())
    print(json.dumps({
        "rows": len(prompt_set), "batch_size": args.batch_size, "model_bytes": model_bytes(model), "seconds": seconds,
        "after_imports": after_imports, "after_load": after_load, "peak_during_extraction": sampler.peak,
        "lifetime_peak_bytes": memory_status()["VmHWM"],
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "output_bytes": output_bytes}))


if __name__ == "__main__":
    run_main(main)
