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

The sweep and selection stages (run only when --stages names them) time a grid of (K, α) two ways: a
validate_2fold process per cell against one validate_2fold --sweep, and per setting a probe fit and an
evaluation against one fit and one Evaluator.evaluate_settings; each compares what the two ways computed.

    python benchmarks/bench_pipeline.py --stages sweep,selection --num_questions 20   # ~22 min on 2 CPU cores

The lm_eval stage (run only when --stages names it; needs the lm_eval extra) times MC1 and MC2 of the first
--lm_eval_questions TruthfulQA questions two ways: lm-evaluation-harness's `hf` model on its truthfulqa mc1 and mc2
tasks (validation/lm_eval_tasks: its prompt and metric code on the answers validate_2fold scores) against
validate_2fold's scorer with the same prompt, on the same loaded model; the ratio is the harness's time over ours.

    HF_DATASETS_OFFLINE=1 python benchmarks/bench_pipeline.py --stages lm_eval --lm_eval_questions 40

Each way is warmed up once (on a small input) before it is timed, except the grids, timed once as they
come (a cold process per cell is what they measure). No timing is asserted anywhere.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
# tqdm bars of the package and of legacy/ would interleave with the report (read when tqdm is imported).
os.environ.setdefault("TQDM_DISABLE", "1")

from iti.cli import parse_config, run_main  # noqa: E402
from iti.errors import UsageError  # noqa: E402
from iti.files import write_text  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

    from benchmarks.probe_backends import BackendComparison
    from iti.data import GenerationQuestion, PromptSet
    from iti.head_shifts import HeadShifts
    from iti.intervention import ShiftedModel
    from iti.mc import MCReferences


# ----------------------------------------------------------------------------- report

def log(message: str) -> None:
    print(message, flush=True)


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


# ----------------------------------------------------------------------------- what the stages share

# The share of the benchmark's questions that validates the probes (the scripts' --val_ratio default).
VAL_RATIO = 0.2

@dataclass(frozen=True)
class Intervention:
    """The random head shifts of the mc, generation and ce_kl stages, on the model, and how the report names them."""
    shifts: HeadShifts
    shifted: ShiftedModel
    label: str


@dataclass
class Bench:
    """The options, the model and the benchmark's questions, and what one stage makes for the next."""
    options: BenchOptions
    model: Any = None
    tokenizer: Any = None
    mc2: PromptSet | None = None  # the tqa_mc2 rows of the first num_questions questions
    records: list[GenerationQuestion] = field(default_factory=list)  # the same questions, MC order
    features: np.ndarray | None = None  # head-wise activations of the mc2 rows (the extraction stage's)
    intervention: Intervention | None = None

    def timed(self, call: Callable[[], Any]):
        """(result, fastest wall time of options.repeats calls) on the benchmark's device."""
        from benchmarks.timing import timed

        return timed(call, self.options.device, self.options.repeats)

    def extract(self, prompts: list[str], with_layer_wise: bool = False) -> dict:
        """The package's batched extraction of `prompts` into in-memory arrays (head-wise, optionally layer-wise)."""
        import numpy as np

        from iti.activations import ActivationRecorder, extract_activations
        from iti.geometry import head_geometry

        geo = head_geometry(self.model.config)
        out = {"head_wise": np.empty((len(prompts), geo.num_layers, geo.width), np.float32)}
        if with_layer_wise:
            out["layer_wise"] = np.empty((len(prompts), geo.num_layers + 1, geo.hidden_size), np.float32)
        extract_activations(ActivationRecorder(self.model), self.tokenizer, prompts, out, self.options.batch_size,
                            progress=False)
        return out

    def head_wise(self) -> np.ndarray:
        """The mc2 rows' head-wise features: the extraction stage's, else extracted now."""
        if self.features is None:
            self.features = self.extract(self.mc2.prompts)["head_wise"]
        return self.features

    def prepare_intervention(self) -> None:
        """The package's random head shifts (`--use_random_dir`: K heads and directions drawn at random), fitted
        by iti.fitting.fit_head_shifts on the mc2 rows, σ from the same rows' features."""
        if self.intervention is not None:
            return
        from iti.fitting import Features, Recipe, fit_head_shifts, seeded_split
        from iti.geometry import head_geometry
        from iti.intervention import ShiftedModel

        options, geo = self.options, head_geometry(self.model.config)
        rows = self.head_wise()
        features = Features(rows, self.mc2.labels, self.mc2.question_ids, rows, self.mc2.question_ids, geo.num_heads)
        recipe = Recipe(options.shift_heads, options.alpha, "random", seed=options.seed,
                        device="cuda" if options.device.startswith("cuda") else "cpu")
        shifts, _ = fit_head_shifts(features, seeded_split(self.mc2.question_ids, VAL_RATIO, options.seed), recipe)
        label = (f"{options.shift_heads} random heads {shifts.head_list()}, alpha {options.alpha:g}, "
                 "sigma from the extracted activations")
        self.intervention = Intervention(shifts, ShiftedModel(self.model, shifts), label)

    def references(self) -> list[MCReferences]:
        from iti.mc import mc_references

        return [mc_references(record) for record in self.records]

    def prompts(self) -> list[str]:
        from iti.prompts import question_prompt

        return [question_prompt(record.question) for record in self.records]


# ----------------------------------------------------------------------------- stages

def extraction(bench: Bench) -> dict:
    import numpy as np

    from legacy.extraction import get_activations

    model, tokenizer, prompts = bench.model, bench.tokenizer, bench.mc2.prompts

    def fast(items):
        out = bench.extract(items, with_layer_wise=True)
        return out["head_wise"], out["layer_wise"]

    get_activations(model, tokenizer, prompts[:2], progress=False)
    fast(prompts[:2])
    (slow_head, slow_layer), slow_s = bench.timed(lambda: get_activations(model, tokenizer, prompts, progress=False))
    (fast_head, fast_layer), fast_s = bench.timed(lambda: fast(prompts))
    bench.features = fast_head
    agreement = {
        "rows": len(prompts),
        "head_wise_max_abs_diff": float(np.abs(slow_head - fast_head).max()),
        "head_wise_max_abs": float(np.abs(slow_head).max()),
        "layer_wise_max_abs_diff": float(np.abs(slow_layer - fast_layer).max()),
        "layer_wise_max_abs": float(np.abs(slow_layer).max()),
    }
    return report("extraction", slow_s, fast_s, agreement, "one prompt per forward, forward pre-hooks",
                  f"batched length-sorted pyvene collectors, batch {bench.options.batch_size}")


def compare_probes(bench: Bench, acts, labels, train_rows, val_rows, num_heads: int) -> BackendComparison:
    """Both probe backends on one split, the torch one on the benchmark's GPU if it runs on one."""
    from benchmarks.probe_backends import compare_backends

    options = bench.options
    device = "cuda" if options.device.startswith("cuda") else "cpu"
    return compare_backends(acts, labels, train_rows, val_rows, num_heads, k=48, device=device, seed=options.seed,
                            threads=options.sklearn_threads)


def probe_agreement(comparison: BackendComparison, train_rows, val_rows) -> dict:
    return {"heads": comparison.heads, "train_rows": len(train_rows), "val_rows": len(val_rows),
            f"top{comparison.k}_in_common": f"{comparison.top_k_overlap}/{comparison.k}",
            "mean_abs_acc_diff": comparison.mean_abs_acc_diff, "max_abs_acc_diff": comparison.max_abs_acc_diff}


def sklearn_label(options: BenchOptions) -> str:
    threads = f"{options.sklearn_threads} BLAS/OpenMP thread" if options.sklearn_threads else "library-default threads"
    return f"scikit-learn LogisticRegression per head, {threads}"


def probes(bench: Bench) -> dict:
    from iti.fitting import seeded_split
    from iti.folds import rows_of_questions
    from iti.geometry import head_geometry

    question_ids = bench.mc2.question_ids
    split = seeded_split(question_ids, VAL_RATIO, bench.options.seed)
    train_rows, val_rows = rows_of_questions(question_ids, split.train), rows_of_questions(question_ids, split.val)
    comparison = compare_probes(bench, bench.head_wise(), bench.mc2.labels, train_rows, val_rows,
                                head_geometry(bench.model.config).num_heads)
    return report("probes", comparison.sklearn_seconds, comparison.torch_seconds,
                  probe_agreement(comparison, train_rows, val_rows), sklearn_label(bench.options),
                  "torch batched Newton, all heads")


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


def probes_7b(bench: Bench) -> dict:
    import numpy as np

    options = bench.options
    began = time.perf_counter()
    acts, labels, _ = synthetic_activations(options.probes_7b_rows, 32, 32, 128, options.seed)
    log(f"[probes_7b] synthetic activations {acts.shape} ({acts.nbytes / 2**30:.1f} GiB) made in "
        f"{time.perf_counter() - began:.0f} s")
    # Synthetic rows belong to no question: the split is of rows.
    perm = np.random.default_rng(options.seed).permutation(len(labels))
    num_train = int(round(len(labels) * 0.8))
    train_rows, val_rows = np.sort(perm[:num_train]), np.sort(perm[num_train:])
    comparison = compare_probes(bench, acts, labels, train_rows, val_rows, 32)
    del acts
    gc.collect()
    return report("probes_7b", comparison.sklearn_seconds, comparison.torch_seconds,
                  probe_agreement(comparison, train_rows, val_rows), sklearn_label(options),
                  "torch batched Newton, 32x32 heads of 128 dims",
                  {"target_top48_at_least_45": "met" if comparison.top_k_overlap >= 45 else "MISSED"})


def mc(bench: Bench) -> dict:
    import numpy as np

    from iti.mc import evaluate_mc
    from iti.metrics import BY_NAME
    from iti.prompts import ANSWER_SEPARATOR
    from legacy.mc import mc_question

    model, tokenizer, records = bench.model, bench.tokenizer, bench.records
    shifts, shifted = bench.intervention.shifts, bench.intervention.shifted
    refs, prompts = bench.references(), bench.prompts()

    def slow(count):
        return [mc_question(model, tokenizer, prompt + ANSWER_SEPARATOR, ref.true, ref.false, ref.best, shifts)
                for ref, prompt in zip(refs[:count], prompts[:count])]

    def fast(count):
        return evaluate_mc(shifted, tokenizer, records[:count], batch_size=bench.options.batch_size, progress=False)

    slow(1)
    fast(1)
    slow_results, slow_s = bench.timed(lambda: slow(len(records)))
    fast_results, fast_s = bench.timed(lambda: fast(len(records)))
    score_gap = max(max(abs(a - b) for a, b in zip(s["scores_true"] + s["scores_false"], f.true_scores + f.false_scores))
                    for s, f in zip(slow_results, fast_results))
    metric_gap = {m: max(abs(s[m.upper()] - BY_NAME[m.upper()].score(f)) for s, f in zip(slow_results, fast_results))
                  for m in ("mc1", "mc2", "mc3")}
    agreement = {
        "questions": len(records), "answers": sum(len(r.true) + len(r.false) for r in refs),
        "max_abs_logprob_diff": float(score_gap),
        "max_abs_mc1_diff": metric_gap["mc1"], "max_abs_mc2_diff": float(metric_gap["mc2"]),
        "max_abs_mc3_diff": metric_gap["mc3"],
        "mean_mc2_one_at_a_time": float(np.mean([s["MC2"] for s in slow_results])),
        "mean_mc2_fast": float(np.mean([BY_NAME["MC2"].score(f) for f in fast_results])),
    }
    return report("mc", slow_s, fast_s, agreement,
                  "one forward per answer with its full prompt (+1 for the best answer)",
                  f"prefix-cached batched, batch {bench.options.batch_size}", {"intervention": bench.intervention.label})


def token_agreement(tokenizer, slow_texts, fast_texts) -> tuple[int, int, int]:
    """(identical texts, identical tokens at equal positions, tokens compared), on the texts re-tokenized."""
    same_tokens = compared = 0
    for a, b in zip(slow_texts, fast_texts):
        ta = tokenizer(a, add_special_tokens=False)["input_ids"]
        tb = tokenizer(b, add_special_tokens=False)["input_ids"]
        compared += max(len(ta), len(tb))
        same_tokens += sum(x == y for x, y in zip(ta, tb))
    return sum(a == b for a, b in zip(slow_texts, fast_texts)), same_tokens, compared


def generation(bench: Bench) -> dict:
    import torch

    from iti.batching import pad_token_id
    from iti.generation import extract_answer, generate_texts
    from legacy.generation import greedy_generate

    model, tokenizer = bench.model, bench.tokenizer
    shifts, shifted = bench.intervention.shifts, bench.intervention.shifted
    prompts, max_new = bench.prompts(), bench.options.max_new_tokens
    prompt_ids = tokenizer(prompts)["input_ids"]
    pad_id = pad_token_id(tokenizer)

    def slow(count):
        return [tokenizer.decode(greedy_generate(model, ids, shifts, max_new_tokens=max_new), skip_special_tokens=True)
                for ids in prompt_ids[:count]]

    def one_by_one_cached(count):
        texts = []
        for ids in prompt_ids[:count]:
            row = torch.tensor([ids])
            out = shifted.generate(row, torch.ones_like(row), max_new_tokens=max_new, do_sample=False, num_beams=1,
                                   pad_token_id=pad_id)
            texts.append(tokenizer.decode(out[0, row.shape[1]:], skip_special_tokens=True))
        return texts

    def fast(count):
        return generate_texts(shifted, tokenizer, prompts[:count], max_new_tokens=max_new,
                              batch_size=bench.options.batch_size, stop_when_answered=False, progress=False)

    slow(1)
    one_by_one_cached(1)
    fast(1)
    slow_texts, slow_s = bench.timed(lambda: slow(len(prompts)))
    cached_texts, cached_s = bench.timed(lambda: one_by_one_cached(len(prompts)))
    fast_texts, fast_s = bench.timed(lambda: fast(len(prompts)))
    same_texts, same_tokens, compared = token_agreement(tokenizer, slow_texts, fast_texts)
    same_answers = sum(extract_answer(a) == extract_answer(b) for a, b in zip(slow_texts, fast_texts))
    agreement = {
        "sequences": len(prompts), "max_new_tokens": max_new,
        "identical_texts": f"{same_texts}/{len(prompts)}",
        "identical_token_fraction": same_tokens / max(compared, 1),
        "identical_answers": f"{same_answers}/{len(prompts)}",
    }
    same_cached, _, _ = token_agreement(tokenizer, cached_texts, fast_texts)
    extra = {
        "intervention": bench.intervention.label,
        "one_at_a_time_with_kv_cache": (f"{cached_s:.2f} s (one prompt per pyvene generate, KV cache): fast is "
                                        f"{ratio(cached_s, fast_s):.1f}x; identical texts {same_cached}/{len(prompts)}"),
        "one_at_a_time_with_kv_cache_s": cached_s,
    }
    return report("generation", slow_s, fast_s, agreement, "one sequence at a time, full forward per token (legacy)",
                  f"batched left-padded greedy generate, batch {bench.options.batch_size}", extra)


def judge(bench: Bench) -> dict:
    """Each reference answer (true and false) of the benchmark's questions, judged for truth and info by the
    evaluated model standing in for the judges."""
    import numpy as np

    from iti.judges import JUDGE_KINDS, judge_scores
    from iti.metrics import ACCURACY_THRESHOLD
    from legacy.judge import judge_score

    judge_model, tokenizer = bench.model, bench.tokenizer
    pairs = [(ref.question, answer) for ref in bench.references() for answer in ref.true + ref.false]
    questions, answers = [q for q, _ in pairs], [a for _, a in pairs]

    def slow(count):
        return {kind: np.array([judge_score(judge_model, tokenizer, q, a, kind)
                                for q, a in zip(questions[:count], answers[:count])])
                for kind in JUDGE_KINDS}

    def fast(count):
        return {kind: judge_scores(judge_model, tokenizer, kind, questions[:count], answers[:count],
                                   bench.options.batch_size, progress=False) for kind in JUDGE_KINDS}

    slow(2)
    fast(2)
    slow_scores, slow_s = bench.timed(lambda: slow(len(answers)))
    fast_scores, fast_s = bench.timed(lambda: fast(len(answers)))
    gap = max(float(np.abs(slow_scores[k] - fast_scores[k]).max()) for k in JUDGE_KINDS)
    same = sum(int(((slow_scores[k] >= ACCURACY_THRESHOLD) == (fast_scores[k] >= ACCURACY_THRESHOLD)).sum())
               for k in JUDGE_KINDS)
    agreement = {"answers_per_judge": len(answers), "judges": "truth+info (the evaluated model stands in)",
                 "max_abs_p_yes_diff": gap, "same_decision": f"{same}/{len(answers) * len(JUDGE_KINDS)}"}
    return report("judge", slow_s, fast_s, agreement, "judge.generate(max_new_tokens=1) per answer",
                  f"one batched forward per {bench.options.batch_size} answers")


def ce_kl(bench: Bench) -> dict:
    """CE and KL on token rows of the prose validation/write_local_text.py writes (the stand-in for OpenWebText)."""
    from iti.batching import pad_token_id
    from iti.ce_kl import ce_and_kl, sample_token_rows
    from iti.local_text import MIN_CHARS, reference_paragraphs
    from iti.metrics import document_mean
    from legacy.ce_kl import ce_kl as one_at_a_time_ce_kl

    model, tokenizer, options = bench.model, bench.tokenizer, bench.options
    shifts, shifted = bench.intervention.shifts, bench.intervention.shifted
    rows = sample_token_rows(reference_paragraphs(MIN_CHARS), tokenizer, options.ce_samples, 128, options.seed)
    pad_id = pad_token_id(tokenizer)
    batch = min(options.batch_size, 8) if options.ce_batch_size is None else options.ce_batch_size

    def fast(count):
        ce, kl = ce_and_kl(shifted, rows[:count], pad_id, batch, progress=False)
        return document_mean(ce), document_mean(kl)

    one_at_a_time_ce_kl(model, rows[:1], shifts, progress=False)
    fast(2)
    (slow_ce, slow_kl), slow_s = bench.timed(lambda: one_at_a_time_ce_kl(model, rows, shifts, progress=False))
    (fast_ce, fast_kl), fast_s = bench.timed(lambda: fast(len(rows)))
    agreement = {"samples": len(rows), "tokens_per_sample": max(len(r) for r in rows),
                 "ce_one_at_a_time": slow_ce, "ce_fast": fast_ce, "abs_ce_diff": abs(slow_ce - fast_ce),
                 "kl_one_at_a_time": slow_kl, "kl_fast": fast_kl, "abs_kl_diff": abs(slow_kl - fast_kl)}
    return report("ce_kl", slow_s, fast_s, agreement, "one sample per forward (3 forwards: CE, KL orig, KL shifted)",
                  f"right-padded batches of {batch} (2 forwards each)",
                  {"intervention": bench.intervention.label, "text": "validation/write_local_text.py prose"})


# ----------------------------------------------------------------------------- grids of (K, α)

def grid_settings(options: BenchOptions) -> list[tuple[int, float]]:
    """Every (K, α) of --grid_k × --grid_alpha, K major (the order of validate_2fold's --sweep cells)."""
    return [(k, alpha) for k in options.grid_ks() for alpha in options.grid_alphas()]


def validate_command(options: BenchOptions, features_dir: Path, results_dir: Path, settings: list[str]) -> list[str]:
    """validate_2fold on the sweep's questions (MC only) with these setting flags, writing under `results_dir`."""
    command = [sys.executable, str(REPO_ROOT / "validation" / "validate_2fold.py"), "--use_center_of_mass",
               "--model_name", options.model_name, "--device", options.device, "--dtype", options.dtype,
               "--limit", str(options.sweep_questions), "--metrics", "mc", "--seed", str(options.seed),
               "--batch_size", str(options.batch_size), "--features_dir", str(features_dir),
               "--results_dir", str(results_dir), *settings]
    return command + script_source_flags(options)


def script_source_flags(options: BenchOptions) -> list[str]:
    return [flag for name, value in (("--model_path", options.model_path), ("--tqa_path", options.tqa_path))
            if value is not None for flag in (name, value)]


def run_script(command: list[str]) -> None:
    """A script of the repository in a process of its own (this process's environment, threads included)."""
    env = {**os.environ, "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def answer_files(results_dir: Path) -> dict[str, Path]:
    """Every answer file of a results folder, by file name."""
    return {path.name: path for path in sorted((results_dir / "results_dump" / "answer_dump").glob("*.csv"))}


def compare_answer_files(slow: dict[str, Path], fast: dict[str, Path]) -> dict:
    """How far two results folders' answer files (the same names) differ: per question, every answer's MC log
    probability and MC1/MC2/MC3."""
    import numpy as np
    import pandas as pd

    if sorted(slow) != sorted(fast):
        raise RuntimeError(f"the two ways wrote different answer files: {sorted(set(slow) ^ set(fast))}")
    logprob_gap, metric_gap, questions = 0.0, {"MC1": 0.0, "MC2": 0.0, "MC3": 0.0}, 0
    for name in slow:
        a, b = pd.read_csv(slow[name]), pd.read_csv(fast[name])
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            raise RuntimeError(f"{name}: the two ways wrote different columns or questions")
        questions += len(a)
        for column in a.columns:
            if "lprob scores" in column:
                pairs = [(json.loads(x), json.loads(y)) for x, y in zip(a[column], b[column])]
                logprob_gap = max([logprob_gap] + [float(np.max(np.abs(np.subtract(x, y)))) for x, y in pairs])
            metric = column.rsplit(" ", 1)[-1]
            if metric in metric_gap:
                metric_gap[metric] = max(metric_gap[metric], float(np.max(np.abs(a[column] - b[column]))))
    return {"answer_files": len(slow), "questions_scored": questions, "same_file_names": True,
            "max_abs_logprob_diff": logprob_gap, **{f"max_abs_{m.lower()}_diff": v for m, v in metric_gap.items()}}


def sweep(bench: Bench) -> dict:
    """The (K, α) grid on --sweep_questions questions, 2 folds, MC: a validate_2fold process per cell (as the sweep
    scripts ran it) against one validate_2fold --sweep; both write every cell's run, compared file by file."""
    import tempfile

    options = bench.options
    settings = grid_settings(options)
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as folder:
        work = Path(folder)
        features = work / "features"
        log(f"[sweep] extracting tqa_mc2 and tqa_gen_end_q of {options.sweep_questions} questions (untimed) ...")
        run_script([sys.executable, str(REPO_ROOT / "get_activations" / "get_activations.py"), "--model_name",
                    options.model_name, "--device", options.device, "--dtype", options.dtype, "--dataset_name",
                    "tqa_mc2", "tqa_gen_end_q", "--limit", str(options.sweep_questions), "--batch_size",
                    str(options.batch_size), "--features_dir", str(features), *script_source_flags(options)])

        def one_process_per_cell():
            for k, alpha in settings:
                run_script(validate_command(options, features, work / "per_cell",
                                            ["--num_heads", str(k), "--alpha", f"{alpha:g}"]))

        def one_process():
            run_script(validate_command(options, features, work / "one_process",
                                        ["--sweep", "--num_heads", *map(str, options.grid_ks()),
                                         "--alpha", *(f"{a:g}" for a in options.grid_alphas())]))

        _, slow_s = timed_once(one_process_per_cell)
        _, fast_s = timed_once(one_process)
        agreement = {"cells": len(settings), **compare_answer_files(answer_files(work / "per_cell"),
                                                                    answer_files(work / "one_process"))}
    return report("sweep", slow_s, fast_s, agreement,
                  f"a validate_2fold process per cell ({len(settings)})", "one validate_2fold --sweep process",
                  {"grid": grid_label(options), "questions": options.sweep_questions, "folds": 2, "metrics": "mc"})


def timed_once(call: Callable[[], Any]) -> tuple[Any, float]:
    """(result, wall time) of one call: a whole grid of processes is too long to repeat."""
    began = time.perf_counter()
    result = call()
    return result, time.perf_counter() - began


def grid_label(options: BenchOptions) -> str:
    return (f"K {{{', '.join(map(str, options.grid_ks()))}}} x alpha "
            f"{{{', '.join(f'{a:g}' for a in options.grid_alphas())}}}")


def selection(bench: Bench) -> dict:
    """A selection grid on the benchmark's questions (MC, and KL on --selection_kl_samples documents): per (K, α) a
    fit_head_shifts and an Evaluator.evaluate (selection before issue 29) against iti.selection.score_settings,
    one probe fit and one Evaluator.evaluate_settings call."""
    from iti.ce_kl import CeKl
    from iti.evaluation import EvalSpec, Evaluator
    from iti.fitting import Features, Recipe, fit_head_shifts, seeded_split
    from iti.geometry import head_geometry
    from iti.local_text import MIN_CHARS, reference_paragraphs
    from iti.prompts import Prompting
    from iti.selection import score_settings

    options, records = bench.options, bench.records
    rows = bench.head_wise()
    features = Features(rows, bench.mc2.labels, bench.mc2.question_ids, rows, bench.mc2.question_ids,
                        head_geometry(bench.model.config).num_heads)
    split = seeded_split(bench.mc2.question_ids, VAL_RATIO, options.seed)
    settings = grid_settings(options)
    recipe = Recipe(1, 1.0, "center_of_mass", seed=options.seed,
                    device="cuda" if options.device.startswith("cuda") else "cpu")
    metrics = {"mc"} | ({"kl"} if options.selection_kl_samples else set())
    compared = ("MC1", "MC2", "MC3") + (("KL",) if "kl" in metrics else ())
    texts = reference_paragraphs(MIN_CHARS) if options.selection_kl_samples else None

    def evaluator() -> Evaluator:
        """A fresh one per way, so each pays its own unshifted CE/KL reference."""
        spec = EvalSpec(frozenset(metrics), "bench", options.batch_size)
        return Evaluator(bench.model, bench.tokenizer, Prompting(), spec,
                         ce_kl=CeKl(texts, bench.tokenizer, options.seed, min(options.batch_size, 8),
                                    options.selection_kl_samples))

    def values(results: dict[str, float]) -> dict[str, float]:
        return {name: results[name] for name in compared}

    def setting_by_setting():
        scoring, table = evaluator(), []
        for k, alpha in settings:
            shifts = (fit_head_shifts(features, split, dataclasses.replace(recipe, num_heads=k, alpha=alpha),
                                      progress=False)[0] if k > 0 and alpha != 0 else None)
            table.append({"K": k, "alpha": alpha, **values(scoring.evaluate(shifts, records, progress=False)[1])})
        return table

    def one_engine():
        scoring = evaluator()

        def score(shifts):
            return [values(results) for _, results in scoring.evaluate_settings(shifts, records, progress=False)]

        return score_settings(features, split, settings, recipe, score)

    slow_table, slow_s = timed_once(setting_by_setting)
    fast_table, fast_s = timed_once(one_engine)
    agreement = {"settings": len(settings), "questions": len(records),
                 "same_settings_in_order": [(r["K"], r["alpha"]) for r in slow_table]
                                           == [(r["K"], r["alpha"]) for r in fast_table],
                 **{f"max_abs_{name.lower()}_diff": max(abs(a[name] - b[name]) for a, b in zip(slow_table, fast_table))
                    for name in compared}}
    return report("selection", slow_s, fast_s, agreement, "per (K, alpha): fit_head_shifts + Evaluator.evaluate",
                  "score_settings: one probe fit, one Evaluator.evaluate_settings",
                  {"grid": grid_label(options), "metrics": ", ".join(sorted(metrics)),
                   "kl_documents": options.selection_kl_samples, "table_one_at_a_time": slow_table,
                   "table_fast": fast_table})


def lm_eval_harness(bench: Bench) -> dict:
    """MC1 and MC2 of the first --lm_eval_questions TruthfulQA questions on the benchmark's model, two ways: lm-eval's
    `hf` model on its truthfulqa mc1 and mc2 tasks (REFERENCE_TASKS) against validate_2fold's scorer (Evaluator, MC,
    `--instruction_prompt none`: lm-eval's prompt, the primer without an instruction); per question, how far the two
    ways' MC1 and MC2 differ."""
    import numpy as np
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from iti.data import load_truthfulqa
    from iti.evaluation import EvalSpec, Evaluator
    from iti.lm_eval_steer import REFERENCE_TASKS, TASKS_DIR
    from iti.prompts import Prompting

    options = bench.options
    records = load_truthfulqa(options.tqa_path).generation_in_mc_order()[:options.lm_eval_questions]
    metadata = {} if options.tqa_path is None else {"tqa_path": options.tqa_path}
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
    harness = HFLM(pretrained=bench.model, tokenizer=bench.tokenizer, batch_size=options.batch_size)
    scorer = Evaluator(bench.model, bench.tokenizer, Prompting(instruction_prompt="none"),
                       EvalSpec(frozenset({"mc"}), "bench", options.batch_size))

    def slow(count):
        return simple_evaluate(harness, tasks=list(REFERENCE_TASKS), limit=count, task_manager=manager,
                               log_samples=True, bootstrap_iters=0)["samples"]

    def fast(count):
        return scorer.evaluate(None, records[:count], progress=False)[0]

    slow(1)
    fast(1)
    harness_samples, slow_s = bench.timed(lambda: slow(len(records)))
    frame, fast_s = bench.timed(lambda: fast(len(records)))
    requests = sum(len(sample["arguments"]) for task in REFERENCE_TASKS for sample in harness_samples[task])
    agreement = {"questions": len(records), "lm_eval_requests": requests}
    for task, metric in zip(REFERENCE_TASKS, ("MC1", "MC2")):
        harness_scores = np.array([s["acc"] for s in sorted(harness_samples[task], key=lambda s: s["doc_id"])])
        ours = frame[f"bench {metric}"].to_numpy(dtype=float)
        agreement |= {f"max_abs_{metric.lower()}_diff": float(np.abs(harness_scores - ours).max()),
                      f"mean_{metric.lower()}_lm_eval": float(harness_scores.mean()),
                      f"mean_{metric.lower()}_ours": float(ours.mean())}
    return report("lm_eval", slow_s, fast_s, agreement,
                  f"lm-eval hf model, {' + '.join(REFERENCE_TASKS)}, batch {options.batch_size}",
                  f"validate_2fold's MC scorer (Evaluator), batch {options.batch_size}")


@dataclass(frozen=True)
class Stage:
    run: Callable[[Bench], dict]
    needs_model: bool = True
    needs_shifts: bool = False  # runs the model with the random head shifts
    by_default: bool = True  # run without --stages (the grids take several minutes more)


# Every stage, in the order of the summary line.
STAGES: dict[str, Stage] = {
    "extraction": Stage(extraction),
    "probes": Stage(probes),
    "probes_7b": Stage(probes_7b, needs_model=False),
    "mc": Stage(mc, needs_shifts=True),
    "generation": Stage(generation, needs_shifts=True),
    "judge": Stage(judge),
    "ce_kl": Stage(ce_kl, needs_shifts=True),
    "sweep": Stage(sweep, needs_model=False, by_default=False),  # its processes load the model
    "selection": Stage(selection, by_default=False),
    "lm_eval": Stage(lm_eval_harness, by_default=False),  # needs lm-evaluation-harness (the lm_eval extra)
}


# ----------------------------------------------------------------------------- options

def _option(default, description: str | None, **metadata):
    """A command-line option: its default, its --help text, and argparse's other settings (iti.cli.build_parser)."""
    return field(default=default, metadata={"help": description, **metadata})


@dataclass
class BenchOptions:
    model_name: str = _option("smollm2_135M_instruct", "registry name (default: the bundled model)")
    model_path: str | None = _option(None, "hub id, local folder or .gguf file (overrides --model_name)")
    random_llama2_7b: bool = _option(False, "a randomly initialised model of LLaMA-2-7B's configuration (no weights "
                                            "downloaded), with the bundled tokenizer; fp16 on a GPU")
    random_layers: int | None = _option(None, argparse.SUPPRESS)  # smoke tests of the 7B path
    save_random_llama2_7b: str | None = _option(
        None, "only save the random LLaMA-2-7B-shaped model (float16, bundled tokenizer) to this folder, for "
              "get_activations/validate_2fold --model_path; see benchmarks/gpu_7b.sh")
    num_questions: int = _option(3, "first N TruthfulQA questions (MC order)")
    device: str = _option("cpu", "cpu (default), cuda, cuda:N")
    dtype: str = _option("auto", None, choices=["auto", "float32", "float16", "bfloat16"])
    batch_size: int = _option(16, None)
    stages: str = _option(",".join(name for name, stage in STAGES.items() if stage.by_default),
                          "comma-separated subset of " + ",".join(STAGES))
    output: str | None = _option(None, "write every figure and the configuration to this JSON file")
    memory: bool = _option(False, "also measure peak memory of extracting all 5,882 tqa_mc2 rows")
    memory_limit: int | None = _option(None, argparse.SUPPRESS)  # questions, for smoke tests
    tqa_path: str | None = _option(None, None)
    seed: int = _option(42, None)
    alpha: float = _option(15.0, "strength of the random head shifts")
    shift_heads: int = _option(4, "number of random heads shifted in mc/generation/ce_kl")
    max_new_tokens: int = _option(20, None)
    ce_samples: int = _option(16, "text samples of 128 tokens for CE/KL")
    ce_batch_size: int | None = _option(None, "CE/KL batch (default min(batch_size, 8))")
    probes_7b_rows: int = _option(5882, "synthetic rows (80%% train, 20%% validation)")
    sklearn_threads: int = _option(1, "BLAS/OpenMP threads for the scikit-learn probes (0: the libraries' default; "
                                      "1, the default, is its fastest on small fits and on a busy machine)")
    threads: int = _option(0, "torch threads (0: torch's default)")
    repeats: int = _option(1, "time each model stage this many times, keep the fastest")
    grid_k: str = _option("4,8,16,32", "K values of the sweep and selection grids (comma-separated)")
    grid_alpha: str = _option("0,2,5,10,15", "alpha values of the sweep and selection grids (comma-separated)")
    sweep_questions: int = _option(20, "questions (validate_2fold --limit, 2 folds) of the sweep stage")
    selection_kl_samples: int = _option(4, "documents of 128 tokens for the selection stage's KL (0: MC only)")
    lm_eval_questions: int = _option(40, "first N TruthfulQA questions (MC order) of the lm_eval stage")

    def grid_ks(self) -> list[int]:
        return [int(value) for value in self.grid_k.split(",")]

    def grid_alphas(self) -> list[float]:
        return [float(value) for value in self.grid_alpha.split(",")]

    def stage_names(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]

    def check(self) -> None:
        unknown = [s for s in self.stage_names() if s not in STAGES]
        if unknown:
            raise UsageError(f"unknown stage(s) {unknown}; pick from {', '.join(STAGES)}")
        try:
            self.grid_ks(), self.grid_alphas()
        except ValueError:
            raise UsageError(f"--grid_k {self.grid_k!r} / --grid_alpha {self.grid_alpha!r}: give comma-separated "
                             "integers and numbers, e.g. --grid_k 4,8 --grid_alpha 0,5") from None
        probing = [s for s in self.stage_names() if s in ("probes", "selection") or STAGES[s].needs_shifts]
        if probing and self.num_questions < 2:
            raise UsageError(f"the {', '.join(probing)} stage(s) hold out a fifth of the questions to validate the "
                             "probes: use --num_questions 2 or more")
        if "lm_eval" in self.stage_names() and importlib.util.find_spec("lm_eval") is None:
            from iti.lm_eval_compare import INSTALL

            raise UsageError(f"the lm_eval stage needs lm-evaluation-harness; {INSTALL}")


# ----------------------------------------------------------------------------- model, memory

def bundled_tokenizer_folder() -> str:
    from iti.models import bundled_gguf_path, gguf_to_folder

    return str(gguf_to_folder(bundled_gguf_path()))


def save_random_llama(folder: str, num_layers: int | None) -> None:
    """A random LLaMA-2-7B-shaped model in float16 with the bundled tokenizer, saved as an ordinary
    model folder (written under a temporary name, then renamed), for the scripts' --model_path."""
    from benchmarks.models import random_llama
    from iti.files import staged_folder
    from iti.models import load_tokenizer

    target = Path(folder)
    if target.exists():
        raise UsageError(f"{target} already exists; remove it or pick another folder")
    tokenizer = load_tokenizer(bundled_tokenizer_folder())
    model = random_llama(tokenizer, "auto", "float16", num_layers)
    with staged_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    log(f"random LLaMA-2-7B geometry ({model.config.num_hidden_layers} layers, float16) -> {target}")


def model_source(options: BenchOptions) -> str:
    from iti.models import resolve_model_source

    return resolve_model_source(options.model_name, "", options.model_path)


def open_bench(options: BenchOptions, config: dict) -> Bench:
    """The model (real, or random at 7B geometry), its tokenizer and the benchmark's questions."""
    from benchmarks.models import model_bytes, random_llama
    from iti.data import load_truthfulqa, tqa_mc2_set
    from iti.models import load_model, load_tokenizer

    if options.random_llama2_7b:
        tokenizer = load_tokenizer(bundled_tokenizer_folder())
        model = random_llama(tokenizer, options.device, options.dtype, options.random_layers)
        source = "random LLaMA-2-7B geometry" + (f" ({options.random_layers} layers)" if options.random_layers else "")
    else:
        source = model_source(options)
        model, tokenizer = load_model(source, options.device, options.dtype)
    config.update(model_source=source, model_bytes=model_bytes(model), model_dtype=str(model.dtype))
    tqa = load_truthfulqa(options.tqa_path)
    n = options.num_questions
    bench = Bench(options, model, tokenizer, tqa_mc2_set(tqa, n), tqa.generation_in_mc_order()[:n])
    log(f"model {source} ({config['model_dtype']}, {config['model_bytes'] / 2**20:.0f} MiB); "
        f"{n} questions, {len(bench.mc2)} tqa_mc2 rows")
    return bench


def memory_measurement(options: BenchOptions) -> dict:
    """Peak resident memory of extracting every tqa_mc2 row (5,882) in a fresh process, against the model's size.

    Resident memory is read from /proc/self/status every 20 ms during the extraction (VmRSS, and its
    anonymous and file-backed parts: file-backed pages are the shared libraries, the mmapped
    safetensors and the memory-mapped feature files being written), and as the process's lifetime
    peak (the kernel's VmHWM, which includes loading the model; getrusage's ru_maxrss would not do:
    Linux carries the forking parent's peak, here the benchmark's own, across exec into the child).
    """
    # For --random_llama2_7b the source only supplies the tokenizer (the bundled one).
    source = bundled_tokenizer_folder() if options.random_llama2_7b else model_source(options)
    command = [sys.executable, "-m", "benchmarks.memory_probe", "--source", source, "--device", options.device,
               "--dtype", options.dtype, "--batch_size", str(options.batch_size)]
    for flag, value in (("--tqa_path", options.tqa_path), ("--limit", options.memory_limit),
                        ("--random_layers", options.random_layers)):
        if value is not None:
            command += [flag, str(value)]
    if options.random_llama2_7b:
        command.append("--random_llama2_7b")
    log("[memory] extracting every tqa_mc2 row in a subprocess (several minutes on a CPU) ...")
    env = {**os.environ, "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    if options.threads:
        env["OMP_NUM_THREADS"] = str(options.threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
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

def main(argv=None) -> None:
    options = parse_config(BenchOptions, argv, __doc__)
    import torch

    if options.save_random_llama2_7b:
        save_random_llama(options.save_random_llama2_7b, options.random_layers)
        return
    stages = options.stage_names()
    if options.threads:
        torch.set_num_threads(options.threads)
    results: dict = {}
    config = {**dataclasses.asdict(options), "stages": stages, "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
              "torch": torch.__version__, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available() and options.device.startswith("cuda"):
        config["gpu"] = torch.cuda.get_device_name(0)
    log(f"bench_pipeline: stages {','.join(stages)}; device {options.device}; torch threads {torch.get_num_threads()} "
        f"of {os.cpu_count()} cores; load average {config['load_average']}")

    with torch.inference_mode():
        bench = open_bench(options, config) if any(STAGES[s].needs_model for s in stages) else Bench(options)
        for name in stages:
            if STAGES[name].needs_shifts:
                bench.prepare_intervention()
            log(f"--- {name}")
            began = time.perf_counter()
            results[name] = STAGES[name].run(bench)
            results[name]["stage_wall_s"] = time.perf_counter() - began
    if options.memory:
        results["memory"] = memory_measurement(options)
    summary = "summary: " + " ".join(f"{s}={results[s]['ratio']:.1f}x" for s in STAGES if s in results)
    log(summary)
    if options.output:
        write_text(options.output, json.dumps({"config": config, "results": results, "summary": summary},
                                              indent=2, default=_json_default) + "\n", "--output")
        log(f"figures -> {options.output}")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    run_main(main)
