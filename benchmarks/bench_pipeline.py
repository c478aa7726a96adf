"""Every stage of the ITI pipeline timed two ways on the same inputs, in one process.

The one-at-a-time way is the reference in legacy/ (one prompt per forward; one answer per forward
with its full prompt; one generated sequence at a time without a KV cache; one scikit-learn probe
per head; a judge's `generate` per answer; CE/KL one sample at a time). The fast way is the
package (batched, length-sorted pyvene extraction; batched Newton probes; prefix-cached batched MC;
batched left-padded generation; batched judge forwards; batched CE/KL). For each stage it prints
both wall times, their ratio and how far the results agree, then one summary line:

    summary: extraction=1.8x probes=24.0x probes_7b=...x mc=4.1x generation=5.2x judge=3.0x ce_kl=1.2x

python benchmarks/bench_pipeline.py --device cpu                       # the bundled SmolLM2-135M, a few minutes
python benchmarks/bench_pipeline.py --device cuda --random_llama2_7b   # LLaMA-2-7B geometry, random fp16 weights
python benchmarks/bench_pipeline.py --memory                           # also: peak memory of all 5,882 tqa_mc2 rows

Each way is warmed up once (on a small input) before it is timed. No timing is asserted anywhere.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
# tqdm bars of the package and of legacy/ would interleave with the report (read when tqdm is imported).
os.environ.setdefault("TQDM_DISABLE", "1")

from iti.cli import ArgumentParser, run_main  # noqa: E402
from iti.errors import UsageError  # noqa: E402

STAGES = ("extraction", "probes", "probes_7b", "mc", "generation", "judge", "ce_kl")
# LLaMA-2-7B: 32 layers x 32 heads x 128 dims (hidden 4096, MLP 11008).
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)


# ----------------------------------------------------------------------------- helpers

def log(message: str) -> None:
    print(message, flush=True)


def sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 1):
    """(result of the last call, the fastest wall time of `repeats` calls)."""
    best, result = math.inf, None
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - began)
    return result, best


def ratio(slow: float, fast: float) -> float:
    return slow / fast if fast > 0 else math.inf


def report(name: str, slow_s: float, fast_s: float, agreement: dict, slow_label: str, fast_label: str,
           extra: dict | None = None) -> dict:
    r = ratio(slow_s, fast_s)
    log(f"[{name}] one-at-a-time ({slow_label}): {slow_s:.2f} s | fast ({fast_label}): {fast_s:.2f} s | ratio {r:.1f}x")
    log(f"[{name}] agreement: " + ", ".join(f"{k}={_fmt(v)}" for k, v in agreement.items()))
    for key, value in (extra or {}).items():
        log(f"[{name}] {key}: {_fmt(value)}")
    return {"one_at_a_time_s": slow_s, "fast_s": fast_s, "ratio": r, "one_at_a_time": slow_label,
            "fast": fast_label, "agreement": agreement, **(extra or {})}


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


# ----------------------------------------------------------------------------- model and inputs

def random_llama(tokenizer, device: str, dtype, num_layers: int | None = None):
    """A LLaMA-2-7B-shaped model with random weights (no download), in `dtype`, built on `device`.

    The bundled tokenizer supplies the vocabulary (its ids must fit the embedding), so the speed
    measured is the 7B geometry's; the outputs are meaningless text.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    overrides = dict(LLAMA2_7B)
    if num_layers is not None:
        overrides["num_hidden_layers"] = num_layers
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, **overrides)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval().requires_grad_(False)


def save_random_llama(folder: str, num_layers: int | None) -> None:
    """A random LLaMA-2-7B-shaped model in float16 with the bundled tokenizer, saved as an ordinary
    model folder (written under a temporary name, then renamed), for the scripts' --model_path."""
    import torch

    from iti.files import staged_folder
    from iti.models import bundled_gguf_path, gguf_to_folder, load_tokenizer

    target = Path(folder)
    if target.exists():
        raise UsageError(f"{target} already exists; remove it or pick another folder")
    tokenizer = load_tokenizer(str(gguf_to_folder(bundled_gguf_path())))
    model = random_llama(tokenizer, "cuda" if torch.cuda.is_available() else "cpu", torch.float16, num_layers)
    with staged_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    log(f"random LLaMA-2-7B geometry ({model.config.num_hidden_layers} layers, float16) -> {target}")


def resolve_random_dtype(device: str, dtype: str):
    """auto: float16 on a GPU (as LLaMA-2-7B ships), float32 on a CPU."""
    import torch

    if dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def load(args):
    import torch

    from iti.models import bundled_gguf_path, gguf_to_folder, load_model, load_tokenizer, resolve_model_source

    if args.random_llama2_7b:
        tokenizer = load_tokenizer(str(gguf_to_folder(bundled_gguf_path())))
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        model = random_llama(tokenizer, device, resolve_random_dtype(device, args.dtype), args.random_layers)
        return model, tokenizer, "random LLaMA-2-7B geometry" + (f" ({args.random_layers} layers)" if args.random_layers else "")
    source = resolve_model_source(args.model_name, "", args.model_path)
    model, tokenizer = load_model(source, args.device, args.dtype)
    return model, tokenizer, source


def random_shifts(model, features, alpha: float, num_heads: int, seed: int):
    """HeadShifts on `num_heads` random heads with random unit directions (the package's
    `--use_random_heads --use_random_dir` draws); σ is the spread of `features` along each."""
    import numpy as np

    from iti.directions import projection_stds, random_directions
    from iti.head_shifts import HeadShifts
    from iti.models import head_geometry
    from iti.probes import random_heads

    geo = head_geometry(model.config)
    heads = random_heads(geo.num_layers, geo.num_heads, num_heads, seed)
    directions = random_directions(num_heads, geo.head_dim, seed)
    sigmas = projection_stds(features, heads, directions, geo.num_heads)
    layers, head_ids = (np.array(column) for column in zip(*heads))
    return HeadShifts(layers, head_ids, directions, sigmas, np.full(num_heads, 0.5), alpha,
                      geo.num_layers, geo.num_heads, geo.head_dim, {"source": "bench_pipeline random heads"})


# ----------------------------------------------------------------------------- stages

def stage_extraction(ctx):
    import numpy as np

    from legacy.extraction import get_activations

    model, tokenizer, prompts = ctx["model"], ctx["tokenizer"], ctx["mc2"].prompts

    def fast(items):
        out = extract_fast(ctx, items, with_layer_wise=True)
        return out["head_wise"], out["layer_wise"]

    get_activations(model, tokenizer, prompts[:2], progress=False)
    fast(prompts[:2])
    (slow_head, slow_layer), slow_s = timed(lambda: get_activations(model, tokenizer, prompts, progress=False),
                                            ctx["device"], ctx["repeats"])
    (fast_head, fast_layer), fast_s = timed(lambda: fast(prompts), ctx["device"], ctx["repeats"])
    ctx["features"] = fast_head
    agreement = {
        "rows": len(prompts),
        "head_wise_max_abs_diff": float(np.abs(slow_head - fast_head).max()),
        "head_wise_max_abs": float(np.abs(slow_head).max()),
        "layer_wise_max_abs_diff": float(np.abs(slow_layer - fast_layer).max()),
        "layer_wise_max_abs": float(np.abs(slow_layer).max()),
    }
    return report("extraction", slow_s, fast_s, agreement, "one prompt per forward, forward pre-hooks",
                  f"batched length-sorted pyvene collectors, batch {ctx['batch_size']}")


def extract_fast(ctx, prompts, with_layer_wise: bool = False) -> dict:
    """The package's batched extraction of `prompts` into in-memory arrays (head-wise, optionally layer-wise)."""
    import numpy as np

    from iti.activations import ActivationRecorder, extract_activations
    from iti.models import head_geometry

    geo = head_geometry(ctx["model"].config)
    out = {"head_wise": np.empty((len(prompts), geo.num_layers, geo.width), np.float32)}
    if with_layer_wise:
        out["layer_wise"] = np.empty((len(prompts), geo.num_layers + 1, geo.hidden_size), np.float32)
    extract_activations(ActivationRecorder(ctx["model"]), ctx["tokenizer"], prompts, out, ctx["batch_size"],
                        progress=False)
    return out


def ensure_features(ctx):
    """Head-wise features of the benchmark's tqa_mc2 rows (the extraction stage's, else extracted now, untimed)."""
    if ctx.get("features") is None:
        ctx["features"] = extract_fast(ctx, ctx["mc2"].prompts)["head_wise"]
    return ctx["features"]


def sklearn_threads(limit: int):
    """scikit-learn's BLAS/OpenMP thread pools limited to `limit` threads (0: the libraries' default)."""
    if not limit:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=limit)


def probe_comparison(acts, labels, train_rows, val_rows, num_heads, k, ctx):
    """Time torch (batched Newton) and sklearn (one probe per head) on the same split, and their agreement."""
    import numpy as np

    from iti.probes import top_heads, train_probes

    device = "cuda" if str(ctx["device"]).startswith("cuda") else "cpu"
    small = np.ascontiguousarray(acts[:, :1])
    train_probes(small, labels, train_rows, val_rows, num_heads, backend="torch", device=device)
    with sklearn_threads(ctx["sklearn_threads"]):
        train_probes(small[:, :, :acts.shape[2] // num_heads], labels, train_rows, val_rows, 1, backend="sklearn")
    fast, fast_s = timed(lambda: train_probes(acts, labels, train_rows, val_rows, num_heads, backend="torch",
                                              device=device), ctx["device"])
    with sklearn_threads(ctx["sklearn_threads"]):
        slow, slow_s = timed(lambda: train_probes(acts, labels, train_rows, val_rows, num_heads, backend="sklearn"),
                             "cpu")
    k = min(k, fast.val_accuracies.size)
    overlap = len(set(top_heads(fast.val_accuracies, k)) & set(top_heads(slow.val_accuracies, k)))
    gap = np.abs(fast.val_accuracies - slow.val_accuracies)
    agreement = {
        "heads": fast.val_accuracies.size, "train_rows": len(train_rows), "val_rows": len(val_rows),
        f"top{k}_in_common": f"{overlap}/{k}", "mean_abs_acc_diff": float(gap.mean()), "max_abs_acc_diff": float(gap.max()),
    }
    return slow_s, fast_s, agreement, overlap


def stage_probes(ctx):
    import numpy as np

    from iti.models import head_geometry
    from iti.probes import rows_of_questions, train_val_split

    acts = ensure_features(ctx)
    labels, question_ids = ctx["mc2"].labels, ctx["mc2"].question_ids
    train_q, val_q = train_val_split(np.unique(question_ids), 0.2, np.random.default_rng(ctx["seed"]))
    train_rows, val_rows = rows_of_questions(question_ids, train_q), rows_of_questions(question_ids, val_q)
    num_heads = head_geometry(ctx["model"].config).num_heads
    slow_s, fast_s, agreement, _ = probe_comparison(acts, labels, train_rows, val_rows, num_heads, 48, ctx)
    return report("probes", slow_s, fast_s, agreement, sklearn_label(ctx), "torch batched Newton, all heads")


def sklearn_label(ctx) -> str:
    threads = f"{ctx['sklearn_threads']} BLAS/OpenMP thread" if ctx["sklearn_threads"] else "library-default threads"
    return f"scikit-learn LogisticRegression per head, {threads}"


def synthetic_activations(num_rows: int, num_layers: int, num_heads: int, head_dim: int, seed: int,
                          strong: int = 48, medium: int = 32):
    """Float32 [rows, layers, heads*head_dim] like real o_proj inputs, with a planted linear signal.

    Per layer an overall scale from 0.02 to 0.8 (as real o_proj inputs grow with depth); per
    dimension a mean of about one standard deviation and a standard deviation spread over 1..15
    (covariance condition number ~225, as measured on the bundled model's heads). The label
    shifts `strong` heads by 2.0..0.8 and `medium` heads by 0.7..0.4 standard deviations along a
    random unit direction, every other head by |N(0, 0.15)|: the top-48 set is the strong heads,
    with a realistic tail of weakly informative heads behind it.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    labels = rng.integers(0, 2, num_rows)
    total = num_layers * num_heads
    separations = np.abs(rng.normal(0, 0.15, total))
    order = rng.permutation(total)
    strong, medium = min(strong, total), min(medium, max(0, total - strong))
    separations[order[:strong]] = np.linspace(2.0, 0.8, strong)
    separations[order[strong:strong + medium]] = np.linspace(0.7, 0.4, medium)
    acts = np.empty((num_rows, num_layers, num_heads * head_dim), np.float32)
    centred = torch.as_tensor(labels - 0.5, dtype=torch.float32)[:, None, None]
    for layer in range(num_layers):
        scale = 0.02 * 40 ** (layer / max(num_layers - 1, 1))
        spread = torch.as_tensor(rng.permutation(np.geomspace(1, 15, head_dim)), dtype=torch.float32)
        spread = spread / spread.pow(2).mean().sqrt()
        directions = torch.randn(num_heads, head_dim, generator=gen)
        directions /= directions.norm(dim=1, keepdim=True)
        shift = torch.as_tensor(separations[layer * num_heads:(layer + 1) * num_heads], dtype=torch.float32)
        x = torch.randn(num_rows, num_heads, head_dim, generator=gen) * spread
        x += torch.randn(num_heads, head_dim, generator=gen) * spread
        x += centred * (shift[:, None] * directions * spread)
        acts[:, layer] = (x * scale).reshape(num_rows, -1).numpy()
    return acts, labels, separations.reshape(num_layers, num_heads)


def stage_probes_7b(ctx):
    import numpy as np

    args = ctx["args"]
    began = time.perf_counter()
    acts, labels, _ = synthetic_activations(args.probes_7b_rows, 32, 32, 128, ctx["seed"])
    log(f"[probes_7b] synthetic activations {acts.shape} ({acts.nbytes / 2**30:.1f} GiB) made in "
        f"{time.perf_counter() - began:.0f} s")
    rng = np.random.default_rng(ctx["seed"])
    perm = rng.permutation(len(labels))
    num_train = int(round(len(labels) * 0.8))
    train_rows, val_rows = np.sort(perm[:num_train]), np.sort(perm[num_train:])
    slow_s, fast_s, agreement, overlap = probe_comparison(acts, labels, train_rows, val_rows, 32, 48, ctx)
    del acts
    gc.collect()
    return report("probes_7b", slow_s, fast_s, agreement, sklearn_label(ctx),
                  "torch batched Newton, 32x32 heads of 128 dims",
                  {"target_top48_at_least_45": "met" if overlap >= 45 else "MISSED"})


def mc_inputs(ctx):
    from iti.mc import mc_references
    from iti.prompts import question_prompt

    records = ctx["records"]
    refs = [mc_references(r) for r in records]
    prompts = [question_prompt(ref.question) for ref in refs]
    return records, refs, prompts


def stage_mc(ctx):
    import numpy as np

    from iti.mc import evaluate_mc
    from iti.prompts import ANSWER_SEPARATOR
    from legacy.mc import mc_question

    model, tokenizer, shifts = ctx["model"], ctx["tokenizer"], ctx["shifts"]
    records, refs, prompts = mc_inputs(ctx)
    shifted = ctx["shifted"]

    def slow(count):
        return [mc_question(model, tokenizer, prompt + ANSWER_SEPARATOR, ref.true, ref.false, ref.best, shifts)
                for ref, prompt in zip(refs[:count], prompts[:count])]

    def fast(count):
        return evaluate_mc(shifted, tokenizer, records[:count], batch_size=ctx["batch_size"], progress=False)

    slow(1)
    fast(1)
    slow_results, slow_s = timed(lambda: slow(len(records)), ctx["device"], ctx["repeats"])
    fast_results, fast_s = timed(lambda: fast(len(records)), ctx["device"], ctx["repeats"])
    score_gap = max(max(abs(a - b) for a, b in zip(s["scores_true"] + s["scores_false"], f.true_scores + f.false_scores))
                    for s, f in zip(slow_results, fast_results))
    answers = sum(len(r.true) + len(r.false) for r in refs)
    metric_gap = {m: max(abs(s[m.upper()] - getattr(f, m)) for s, f in zip(slow_results, fast_results))
                  for m in ("mc1", "mc2", "mc3")}
    agreement = {
        "questions": len(records), "answers": answers,
        "max_abs_logprob_diff": float(score_gap),
        "max_abs_mc1_diff": metric_gap["mc1"], "max_abs_mc2_diff": float(metric_gap["mc2"]),
        "max_abs_mc3_diff": metric_gap["mc3"],
        "mean_mc2_one_at_a_time": float(np.mean([s["MC2"] for s in slow_results])),
        "mean_mc2_fast": float(np.mean([f.mc2 for f in fast_results])),
    }
    return report("mc", slow_s, fast_s, agreement, "one forward per answer with its full prompt (+1 for the best answer)",
                  f"prefix-cached batched, batch {ctx['batch_size']}", {"intervention": ctx["shift_label"]})


def token_agreement(tokenizer, slow_texts, fast_texts) -> tuple[int, int, int]:
    """(identical texts, identical tokens at equal positions, tokens compared), on the texts re-tokenized."""
    same_tokens = compared = 0
    for a, b in zip(slow_texts, fast_texts):
        ta = tokenizer(a, add_special_tokens=False)["input_ids"]
        tb = tokenizer(b, add_special_tokens=False)["input_ids"]
        compared += max(len(ta), len(tb))
        same_tokens += sum(x == y for x, y in zip(ta, tb))
    return sum(a == b for a, b in zip(slow_texts, fast_texts)), same_tokens, compared


def stage_generation(ctx):
    from iti.batching import pad_token_id
    from iti.generation import extract_answer, generate_texts
    from legacy.generation import greedy_generate

    model, tokenizer, shifts, shifted = ctx["model"], ctx["tokenizer"], ctx["shifts"], ctx["shifted"]
    _, _, prompts = mc_inputs(ctx)
    max_new = ctx["args"].max_new_tokens
    prompt_ids = tokenizer(prompts)["input_ids"]
    pad_id = pad_token_id(tokenizer)

    def slow(count):
        return [tokenizer.decode(greedy_generate(model, ids, shifts, max_new_tokens=max_new), skip_special_tokens=True)
                for ids in prompt_ids[:count]]

    def one_by_one_cached(count):
        import torch

        texts = []
        for ids in prompt_ids[:count]:
            row = torch.tensor([ids])
            out = shifted.generate(row, torch.ones_like(row), max_new_tokens=max_new, do_sample=False, num_beams=1,
                                   pad_token_id=pad_id)
            texts.append(tokenizer.decode(out[0, row.shape[1]:], skip_special_tokens=True))
        return texts

    def fast(count):
        return generate_texts(shifted, tokenizer, prompts[:count], max_new_tokens=max_new, batch_size=ctx["batch_size"],
                              stop_when_answered=False, progress=False)

    slow(1)
    one_by_one_cached(1)
    fast(1)
    slow_texts, slow_s = timed(lambda: slow(len(prompts)), ctx["device"], ctx["repeats"])
    cached_texts, cached_s = timed(lambda: one_by_one_cached(len(prompts)), ctx["device"], ctx["repeats"])
    fast_texts, fast_s = timed(lambda: fast(len(prompts)), ctx["device"], ctx["repeats"])
    same_texts, same_tokens, compared = token_agreement(tokenizer, slow_texts, fast_texts)
    agreement = {
        "sequences": len(prompts), "max_new_tokens": max_new,
        "identical_texts": f"{same_texts}/{len(prompts)}",
        "identical_token_fraction": same_tokens / max(compared, 1),
        "identical_answers": f"{sum(extract_answer(a) == extract_answer(b) for a, b in zip(slow_texts, fast_texts))}/{len(prompts)}",
    }
    same_cached, _, _ = token_agreement(tokenizer, cached_texts, fast_texts)
    extra = {
        "intervention": ctx["shift_label"],
        "one_at_a_time_with_kv_cache": (f"{cached_s:.2f} s (one prompt per pyvene generate, KV cache): fast is "
                                        f"{ratio(cached_s, fast_s):.1f}x; identical texts {same_cached}/{len(prompts)}"),
        "one_at_a_time_with_kv_cache_s": cached_s,
    }
    ctx["generated"] = [extract_answer(t) for t in fast_texts]
    return report("generation", slow_s, fast_s, agreement, "one sequence at a time, full forward per token (legacy)",
                  f"batched left-padded greedy generate, batch {ctx['batch_size']}", extra)


def judge_inputs(ctx):
    """Each reference answer (true and false) of the benchmark's questions, judged for truth and info."""
    _, refs, _ = mc_inputs(ctx)
    pairs = [(ref.question, answer) for ref in refs for answer in ref.true + ref.false]
    return [q for q, _ in pairs], [a for _, a in pairs]


def stage_judge(ctx):
    import numpy as np

    from iti.judges import ACCURACY_THRESHOLD, JUDGE_KINDS, judge_scores
    from legacy.judge import judge_score

    judge, tokenizer = ctx["model"], ctx["tokenizer"]
    questions, answers = judge_inputs(ctx)

    def slow(count):
        return {kind: np.array([judge_score(judge, tokenizer, q, a, kind) for q, a in zip(questions[:count], answers[:count])])
                for kind in JUDGE_KINDS}

    def fast(count):
        return {kind: judge_scores(judge, tokenizer, kind, questions[:count], answers[:count], ctx["batch_size"],
                                   progress=False) for kind in JUDGE_KINDS}

    slow(2)
    fast(2)
    slow_scores, slow_s = timed(lambda: slow(len(answers)), ctx["device"], ctx["repeats"])
    fast_scores, fast_s = timed(lambda: fast(len(answers)), ctx["device"], ctx["repeats"])
    gap = max(float(np.abs(slow_scores[k] - fast_scores[k]).max()) for k in JUDGE_KINDS)
    same = sum(int(((slow_scores[k] >= ACCURACY_THRESHOLD) == (fast_scores[k] >= ACCURACY_THRESHOLD)).sum())
               for k in JUDGE_KINDS)
    agreement = {"answers_per_judge": len(answers), "judges": "truth+info (the evaluated model stands in)",
                 "max_abs_p_yes_diff": gap, "same_decision": f"{same}/{len(answers) * len(JUDGE_KINDS)}"}
    return report("judge", slow_s, fast_s, agreement, "judge.generate(max_new_tokens=1) per answer",
                  f"one batched forward per {ctx['batch_size']} answers")


def local_text_rows(ctx):
    """Token rows of the prose validation/write_local_text.py writes (the stand-in for OpenWebText)."""
    from iti.ce_kl import sample_token_rows
    from validation.write_local_text import MIN_CHARS, reference_paragraphs

    return sample_token_rows(reference_paragraphs(MIN_CHARS), ctx["tokenizer"], ctx["args"].ce_samples, 128, ctx["seed"])


def stage_ce_kl(ctx):
    from iti.batching import pad_token_id
    from iti.ce_kl import ce_and_kl
    from legacy.ce_kl import ce_kl

    model, tokenizer, shifts, shifted = ctx["model"], ctx["tokenizer"], ctx["shifts"], ctx["shifted"]
    rows = local_text_rows(ctx)
    pad_id = pad_token_id(tokenizer)
    batch = min(ctx["batch_size"], 8) if ctx["args"].ce_batch_size is None else ctx["args"].ce_batch_size

    ce_kl(model, rows[:1], shifts, progress=False)
    ce_and_kl(shifted, rows[:2], pad_id, batch, progress=False)
    (slow_ce, slow_kl), slow_s = timed(lambda: ce_kl(model, rows, shifts, progress=False), ctx["device"], ctx["repeats"])
    (fast_ce, fast_kl), fast_s = timed(lambda: ce_and_kl(shifted, rows, pad_id, batch, progress=False), ctx["device"],
                                       ctx["repeats"])
    agreement = {"samples": len(rows), "tokens_per_sample": max(len(r) for r in rows),
                 "ce_one_at_a_time": slow_ce, "ce_fast": fast_ce, "abs_ce_diff": abs(slow_ce - fast_ce),
                 "kl_one_at_a_time": slow_kl, "kl_fast": fast_kl, "abs_kl_diff": abs(slow_kl - fast_kl)}
    return report("ce_kl", slow_s, fast_s, agreement, "one sample per forward (3 forwards: CE, KL orig, KL shifted)",
                  f"right-padded batches of {batch} (2 forwards each)", {"intervention": ctx["shift_label"],
                                                                         "text": "validation/write_local_text.py prose"})


STAGE_FUNCTIONS = {"extraction": stage_extraction, "probes": stage_probes, "probes_7b": stage_probes_7b,
                   "mc": stage_mc, "generation": stage_generation, "judge": stage_judge, "ce_kl": stage_ce_kl}


# ----------------------------------------------------------------------------- memory

MEMORY_CHILD = r"""
import json, sys, tempfile, threading, time
sys.path.insert(0, {root!r})

def status():
    fields = {{}}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024
    return fields

import torch
from iti.activations import save_features
from iti.data import build_prompt_set
from iti.models import load_model
after_imports = status()
if {random_layers!r} is None:
    model, tokenizer = load_model({source!r}, {device!r}, {dtype!r})
else:  # --random_llama2_7b: the same random LLaMA-2-7B-shaped model as the timed stages
    sys.path.insert(0, {root!r} + "/benchmarks")
    from bench_pipeline import random_llama, resolve_random_dtype
    from iti.models import load_tokenizer
    tokenizer = load_tokenizer({source!r})
    model = random_llama(tokenizer, {device!r}, resolve_random_dtype({device!r}, {dtype!r}), {random_layers!r} or None)
model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
prompt_set = build_prompt_set("tqa_mc2", {tqa!r}, {limit!r})
after_load = status()
peak = dict(after_load)
stop = threading.Event()
def sample():
    while not stop.is_set():
        for key, value in status().items():
            peak[key] = max(peak.get(key, 0), value)
        time.sleep(0.02)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
began = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    paths = save_features(model, tokenizer, prompt_set, tmp, "memory_probe", {batch!r}, progress=False)
    seconds = time.perf_counter() - began
    out_bytes = sum(p.stat().st_size for p in paths.values())
    stop.set()
    sampler.join()
print(json.dumps({{"rows": len(prompt_set), "batch_size": {batch!r}, "model_bytes": model_bytes, "seconds": seconds,
                  "after_imports": after_imports, "after_load": after_load, "peak_during_extraction": peak,
                  "lifetime_peak_bytes": status()["VmHWM"],
                  "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
                  "output_bytes": out_bytes}}))
"""


def memory_measurement(args, source: str) -> dict:
    """Peak resident memory of extracting every tqa_mc2 row (5,882) in a fresh process, against the model's size.

    Resident memory is read from /proc/self/status every 20 ms during the extraction (VmRSS, and its
    anonymous and file-backed parts: file-backed pages are the shared libraries, the mmapped
    safetensors and the memory-mapped feature files being written), and as the process's lifetime
    peak (the kernel's VmHWM, which includes loading the model; getrusage's ru_maxrss would not do:
    Linux carries the forking parent's peak, here the benchmark's own, across exec into the child).
    """
    random_layers = (args.random_layers or 0) if args.random_llama2_7b else None
    code = MEMORY_CHILD.format(root=str(REPO_ROOT), source=source, device=args.device, dtype=args.dtype,
                               tqa=args.tqa_path, limit=args.memory_limit, batch=args.batch_size,
                               random_layers=random_layers)
    log("[memory] extracting every tqa_mc2 row in a subprocess (several minutes on a CPU) ...")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    gib = 2 ** 30
    model = result["model_bytes"]
    peak, loaded, imports = result["peak_during_extraction"], result["after_load"], result["after_imports"]
    result["peak_rss_over_model"] = peak["VmRSS"] / model
    result["beyond_imports_bytes"] = peak["VmRSS"] - imports["VmRSS"]
    result["beyond_imports_over_model"] = result["beyond_imports_bytes"] / model
    result["anon_increment_bytes"] = peak["RssAnon"] - loaded["RssAnon"]
    log(f"[memory] {result['rows']} rows, batch {result['batch_size']}, in {result['seconds']:.0f} s; "
        f"model weights {model / gib:.3f} GiB; feature files written (memory-mapped) {result['output_bytes'] / gib:.2f} GiB")
    log(f"[memory] resident: after imports {imports['VmRSS'] / gib:.2f} GiB, after loading the model "
        f"{loaded['VmRSS'] / gib:.2f} GiB (safetensors weights are mapped, resident once first used), peak while "
        f"extracting {peak['VmRSS'] / gib:.2f} GiB = {peak['VmRSS'] / model:.2f}x the model (anonymous "
        f"{peak['RssAnon'] / gib:.2f} GiB, file-backed {peak['RssFile'] / gib:.2f} GiB); lifetime peak "
        f"(VmHWM) {result['lifetime_peak_bytes'] / gib:.2f} GiB")
    if result.get("cuda_max_allocated_bytes"):
        log(f"[memory] GPU: peak allocated {result['cuda_max_allocated_bytes'] / gib:.2f} GiB = "
            f"{result['cuda_max_allocated_bytes'] / model:.2f}x the model")
    log(f"[memory] peak beyond the imported libraries: {result['beyond_imports_bytes'] / gib:.2f} GiB = "
        f"{result['beyond_imports_over_model']:.2f}x the model; anonymous memory grew by "
        f"{result['anon_increment_bytes'] / gib:.3f} GiB while extracting")
    return result


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--model_name", default="smollm2_135M_instruct", help="registry name (default: the bundled model)")
    parser.add_argument("--model_path", default=None, help="hub id, local folder or .gguf file (overrides --model_name)")
    parser.add_argument("--random_llama2_7b", action="store_true",
                        help="a randomly initialised model of LLaMA-2-7B's configuration (no weights downloaded), "
                             "with the bundled tokenizer; fp16 on a GPU")
    parser.add_argument("--random_layers", type=int, default=None, help=argparse.SUPPRESS)  # smoke tests of the 7B path
    parser.add_argument("--save_random_llama2_7b", metavar="FOLDER", default=None,
                        help="only save the random LLaMA-2-7B-shaped model (float16, bundled tokenizer) to FOLDER, "
                             "for get_activations/validate_2fold --model_path; see benchmarks/gpu_7b.sh")
    parser.add_argument("--num_questions", type=int, default=3, help="first N TruthfulQA questions (MC order)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    parser.add_argument("--output", default=None, help="write every figure and the configuration to this JSON file")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory of extracting all 5,882 tqa_mc2 rows")
    parser.add_argument("--memory_limit", type=int, default=None, help=argparse.SUPPRESS)  # questions, for smoke tests
    parser.add_argument("--tqa_path", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--alpha", type=float, default=15.0, help="strength of the random head shifts")
    parser.add_argument("--shift_heads", type=int, default=4, help="number of random heads shifted in mc/generation/ce_kl")
    parser.add_argument("--max_new_tokens", type=int, default=20)
    parser.add_argument("--ce_samples", type=int, default=16, help="text samples of 128 tokens for CE/KL")
    parser.add_argument("--ce_batch_size", type=int, default=None, help="CE/KL batch (default min(batch_size, 8))")
    parser.add_argument("--probes_7b_rows", type=int, default=5882, help="synthetic rows (80%% train, 20%% validation)")
    parser.add_argument("--sklearn_threads", type=int, default=1,
                        help="BLAS/OpenMP threads for the scikit-learn probes (0: the libraries' default; 1, the "
                             "default, is its fastest on small fits and on a busy machine)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="time each model stage this many times, keep the fastest")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from iti.data import load_truthfulqa, tqa_mc2_set
    from iti.intervention import ShiftedModel

    if args.save_random_llama2_7b:
        save_random_llama(args.save_random_llama2_7b, args.random_layers)
        return
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; pick from {', '.join(STAGES)}")
    if "probes" in stages and args.num_questions < 2:
        raise UsageError("the probes stage holds out a fifth of the questions to validate: use --num_questions 2 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {}
    config = {**vars(args), "stages": stages, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available() and str(args.device).startswith("cuda"):
        config["gpu"] = torch.cuda.get_device_name(0)
    log(f"bench_pipeline: stages {','.join(stages)}; device {args.device}; torch threads {torch.get_num_threads()} "
        f"of {os.cpu_count()} cores; load average {config['load_average']}")

    needs_model = [s for s in stages if s != "probes_7b"]
    with torch.inference_mode():
        if needs_model:
            model, tokenizer, source = load(args)
            config["model_source"] = source
            config["model_bytes"] = model_bytes(model)
            config["model_dtype"] = str(model.dtype)
            tqa = load_truthfulqa(args.tqa_path)
            n = args.num_questions
            ctx = {"args": args, "model": model, "tokenizer": tokenizer, "device": args.device, "seed": args.seed,
                   "batch_size": args.batch_size, "repeats": args.repeats, "sklearn_threads": args.sklearn_threads,
                   "mc2": tqa_mc2_set(tqa, n), "records": tqa.generation_in_mc_order()[:n], "features": None}
            log(f"model {source} ({config['model_dtype']}, {config['model_bytes'] / 2**20:.0f} MiB); "
                f"{n} questions, {len(ctx['mc2'])} tqa_mc2 rows")
        else:
            ctx = {"args": args, "device": args.device, "seed": args.seed, "repeats": args.repeats,
                   "sklearn_threads": args.sklearn_threads}
        for stage in stages:
            if stage in ("mc", "generation", "ce_kl") and "shifts" not in ctx:
                features = ensure_features(ctx)
                ctx["shifts"] = random_shifts(ctx["model"], features, args.alpha, args.shift_heads, args.seed)
                ctx["shifted"] = ShiftedModel(ctx["model"], ctx["shifts"])
                ctx["shift_label"] = (f"{args.shift_heads} random heads {ctx['shifts'].head_list()}, alpha {args.alpha:g}, "
                                      "sigma from the extracted activations")
            log(f"--- {stage}")
            began = time.perf_counter()
            results[stage] = STAGE_FUNCTIONS[stage](ctx)
            results[stage]["stage_wall_s"] = time.perf_counter() - began
    if args.memory:
        from iti.models import bundled_gguf_path, gguf_to_folder, resolve_model_source

        # For --random_llama2_7b the source only supplies the tokenizer (the bundled one).
        source = (str(gguf_to_folder(bundled_gguf_path())) if args.random_llama2_7b
                  else resolve_model_source(args.model_name, "", args.model_path))
        results["memory"] = memory_measurement(args, source)
    order = ["extraction", "probes", "probes_7b", "mc", "generation", "judge", "ce_kl"]
    summary = "summary: " + " ".join(f"{s}={results[s]['ratio']:.1f}x" for s in order if s in results)
    log(summary)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"config": config, "results": results, "summary": summary},
                                                indent=2, default=_json_default) + "\n")
        log(f"figures -> {args.output}")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    run_main(main)
