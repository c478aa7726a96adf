"""Our TruthfulQA MC scores beside lm-evaluation-harness's, question by question, on the same model.

Plain model: lm-eval's truthfulqa_refs_mc1/mc2 tasks (validation/lm_eval_tasks: its own prompt and metric code on
the answers validate_2fold scores) against validate_2fold's MC scorer with the same prompt (`--instruction_prompt
none`: the QA primer, no instruction; lm-eval's context ends in `\\nA:` and its continuations start with a space,
which is the same text as our `\\nA: {answer}`). With --head_shifts, also: lm-eval's `steered` model with the
exported steer file (iti.lm_eval_steer) against lm-eval's `hf` model on the baked folder (iti.bake) and against our
scorer on that baked folder (what validate_2fold --model_prefix local_ --num_heads 0 computes).

Every answer's summed log-probability must agree within a tolerance derived from the dtype, the model's depth and
the answer's length (answer_tolerance). Where the two split the prompt/answer boundary into different tokens (lm-eval
encodes context + continuation and splits at the context's token count; we take the tokens covering the answer's
characters), the answer is reported with both token lists and the gap, and left out of the comparison rather than
absorbed into the tolerance. Exit status 1 when anything disagrees.

python validation/lm_eval_crosscheck.py --limit 5
python validation/lm_eval_crosscheck.py --limit 5 --head_shifts validation/results_dump/head_shifts_dump/RUN_fold_0_com
"""
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import LmEvalCheckConfig  # noqa: E402

REFERENCE_TASKS = ("truthfulqa_refs_mc1", "truthfulqa_refs_mc2")
# A relative error of a few float ulps per layer (see answer_tolerance).
ULPS_PER_LAYER = 4


@dataclass
class AnswerCheck:
    """One answer of one task as both sides score it; `boundary` says how their tokens differ (None: the same)."""
    task: str
    text: str
    ours: float
    theirs: float
    tolerance: float
    boundary: str | None = None

    @property
    def agrees(self) -> bool:
        return abs(self.ours - self.theirs) <= self.tolerance


@dataclass
class QuestionCheck:
    """One question: every answer, and MC1/MC2 as each side computes them."""
    index: int
    question: str
    answers: list[AnswerCheck]
    mc1: tuple[float, float]
    mc2: tuple[float, float]
    mc1_margin: float  # our best answer's score minus the best false one's

    @property
    def boundary_answers(self) -> list[AnswerCheck]:
        return [a for a in self.answers if a.boundary is not None]

    def problems(self) -> list[str]:
        """What disagrees beyond the tolerance, among the answers both split alike."""
        found = [f"{a.task} {a.text!r}: {a.ours:.6f} vs {a.theirs:.6f} (tolerance {a.tolerance:.2g})"
                 for a in self.answers if a.boundary is None and not a.agrees]
        if self.boundary_answers:
            return found
        widest = max(a.tolerance for a in self.answers)
        # MC2 = σ(log Σ_true − log Σ_false); moving every score by at most t moves the log ratio by at most 2t and
        # σ' ≤ 1/4, so MC2 moves by at most t/2.
        if abs(self.mc2[0] - self.mc2[1]) > widest / 2:
            found.append(f"MC2 {self.mc2[0]:.6f} vs {self.mc2[1]:.6f}")
        if self.mc1[0] != self.mc1[1] and abs(self.mc1_margin) > 2 * widest:
            found.append(f"MC1 {self.mc1[0]:g} vs {self.mc1[1]:g} with a margin of {self.mc1_margin:.3g}")
        return found


def answer_tolerance(dtype, num_layers: int, tokens: int, logit_scale: float) -> float:
    """How far two forward passes in `dtype` may put an answer's summed log-probability apart when they differ only
    in the order of their sums (batching, padding, a KV cache, a bias added inside or after o_proj). Each layer's
    reductions add a relative error of a few ulps (ULPS_PER_LAYER·ε) of the values summed; carried through
    `num_layers` layers to the logits, whose size bounds those values (`logit_scale`: the largest |logit| of the
    model on a prompt), a token's log-probability (a logit minus a log-sum-exp of logits) is off by at most twice
    that, and the answer's by `tokens` times a token's."""
    import torch

    return 2 * ULPS_PER_LAYER * torch.finfo(dtype).eps * num_layers * logit_scale * tokens


def logit_scale(model, tokenizer, text: str) -> float:
    """The largest |logit| of `model` over `text`'s positions."""
    import torch

    from iti.models import input_device

    ids = torch.tensor([tokenizer(text)["input_ids"]], device=input_device(model))
    with torch.inference_mode():
        return float(model(input_ids=ids).logits.abs().max())


def lm_eval_samples(lm, limit: int, tqa_path: str | None) -> dict[str, list[dict]]:
    """lm-eval's logged samples of the reference tasks on the first `limit` questions, by question."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from iti.lm_eval_steer import TASKS_DIR

    metadata = {"tqa_path": tqa_path} if tqa_path else None
    results = simple_evaluate(model=lm, tasks=list(REFERENCE_TASKS), limit=limit, log_samples=True,
                              task_manager=TaskManager(include_path=str(TASKS_DIR), metadata=metadata),
                              verbosity="ERROR")
    return {task: sorted(results["samples"][task], key=lambda sample: sample["doc_id"]) for task in REFERENCE_TASKS}


def boundary_difference(lm, tokenizer, prompt: str, answer: str, context: str, continuation: str) -> str | None:
    """How lm-eval's tokens of (context, continuation) differ from ours of (prompt, answer), or None. lm-eval's
    split is its own _encode_pair, the one its loglikelihood scores with."""
    from iti.mc import tokenize_answer

    context_ids, continuation_ids = lm._encode_pair(context, continuation)
    row = tokenize_answer(tokenizer, prompt, answer)
    if row.ids == context_ids + continuation_ids and row.first == len(context_ids):
        return None
    return (f"lm-eval scores {tokenizer.convert_ids_to_tokens(continuation_ids)[:3]}... ({len(continuation_ids)} "
            f"tokens after {len(context_ids)}), we score {tokenizer.convert_ids_to_tokens(row.ids[row.first:])[:3]}"
            f"... ({len(row.ids) - row.first} tokens after {row.first})")


def check_questions(lm, samples: dict[str, list[dict]], results, records, tokenizer, dtype, num_layers: int,
                    scale: float) -> list[QuestionCheck]:
    """lm-eval's samples against our MCResults (`results`, of `records`), answer by answer and question by
    question."""
    from iti.mc import mc_references, tokenize_answer
    from iti.metrics import mc1, mc2
    from iti.prompts import Prompting

    prompting = Prompting(instruction_prompt="none")
    checks = []
    for index, (record, result) in enumerate(zip(records, results)):
        ref, prompt = mc_references(record), prompting.prompt(record.question)
        ours = {"truthfulqa_refs_mc1": [result.best_score, *result.false_scores],
                "truthfulqa_refs_mc2": result.true_scores + result.false_scores}
        answers = []
        for task, scores in ours.items():
            sample = samples[task][index]
            for (context, continuation), theirs, score in zip(sample["arguments"], sample["filtered_resps"], scores):
                answer = continuation.strip()
                row = tokenize_answer(tokenizer, prompt, answer)
                tokens = len(row.ids) - row.first
                answers.append(AnswerCheck(task, answer, score, float(theirs[0]),
                                           answer_tolerance(dtype, num_layers, tokens, scale),
                                           boundary_difference(lm, tokenizer, prompt, answer, context, continuation)))
        checks.append(QuestionCheck(index, ref.question, answers,
                                    (mc1(result), float(samples["truthfulqa_refs_mc1"][index]["acc"])),
                                    (mc2(result), float(samples["truthfulqa_refs_mc2"][index]["acc"])),
                                    result.best_score - max(result.false_scores)))
    return checks


def lm_eval_gaps(first: dict[str, list[dict]], second: dict[str, list[dict]], lm, dtype, num_layers: int,
                 scale: float) -> list[str]:
    """Where two lm-eval runs of the reference tasks (the same questions) score an answer apart beyond the
    tolerance (both split it alike: the same tokenizer and code)."""
    gaps = []
    for task in REFERENCE_TASKS:
        for one, other in zip(first[task], second[task]):
            for (context, continuation), a, b in zip(one["arguments"], one["filtered_resps"], other["filtered_resps"]):
                tolerance = answer_tolerance(dtype, num_layers, len(lm._encode_pair(context, continuation)[1]), scale)
                if abs(a[0] - b[0]) > tolerance:
                    gaps.append(f"{task} question {one['doc_id']} {continuation.strip()!r}: {a[0]:.6f} vs {b[0]:.6f} "
                                f"(tolerance {tolerance:.2g})")
    return gaps


def report(title: str, checks: list[QuestionCheck]) -> list[str]:
    """Print one line per question (and one per answer split differently); return the problems."""
    print(f"\n{title}")
    print(f"{'q':>3}  {'MC1 ours/lm-eval':>16}  {'MC2 ours':>9}  {'MC2 lm-eval':>11}  {'max |gap|':>9}  question")
    problems = []
    for check in checks:
        same = [a for a in check.answers if a.boundary is None]
        gap = max((abs(a.ours - a.theirs) for a in same), default=float("nan"))
        print(f"{check.index:>3}  {check.mc1[0]:>7g}/{check.mc1[1]:<8g}  {check.mc2[0]:>9.6f}  {check.mc2[1]:>11.6f}  "
              f"{gap:>9.2g}  {check.question[:60]}")
        for answer in check.boundary_answers:
            print(f"     boundary differs, {answer.task} {answer.text[:40]!r}: {answer.boundary}; scores "
                  f"{answer.ours:.6f} vs {answer.theirs:.6f} (gap {answer.ours - answer.theirs:+.4g})")
        problems += [f"question {check.index}: {problem}" for problem in check.problems()]
    return problems


def main() -> None:
    cfg = parse_config(LmEvalCheckConfig, description=__doc__)

    import copy
    import tempfile

    from lm_eval.models.hf_steered import SteeredModel
    from lm_eval.models.huggingface import HFLM

    from iti.bake import bake_head_shifts, save_baked_model
    from iti.data import load_truthfulqa
    from iti.geometry import head_geometry
    from iti.head_shifts import HeadShifts
    from iti.intervention import ShiftedModel
    from iti.lm_eval_steer import write_steer_file
    from iti.mc import evaluate_mc
    from iti.models import gguf_to_folder, load_model, resolve_model_source
    from iti.prompts import Prompting

    source = resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path)
    folder = str(gguf_to_folder(source)) if source.endswith(".gguf") else source
    model, tokenizer = load_model(folder, "cpu", cfg.dtype, cfg.trust_remote_code)
    records = load_truthfulqa(cfg.tqa_path).generation_in_mc_order()[:cfg.limit]
    prompting = Prompting(instruction_prompt="none")
    num_layers = head_geometry(model.config).num_layers
    scale = logit_scale(model, tokenizer, prompting.prompt(records[0].question))

    def ours(on_model):
        return evaluate_mc(ShiftedModel(on_model, None), tokenizer, records, prompting, progress=False)

    def checked(lm, on_model, title):
        samples = lm_eval_samples(lm, cfg.limit, cfg.tqa_path)
        checks = check_questions(lm, samples, ours(on_model), records, tokenizer, model.dtype, num_layers, scale)
        return samples, report(title, checks)

    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    _, problems = checked(plain, model, f"{folder}: validate_2fold's MC (--instruction_prompt none) vs lm-eval hf")
    if cfg.head_shifts is not None:
        shifts = HeadShifts.load(cfg.head_shifts)
        shifts.check_geometry(head_geometry(model.config))
        with tempfile.TemporaryDirectory() as scratch:
            steer_path = write_steer_file(shifts, model, Path(scratch) / "steer.pt")
            baked_dir = save_baked_model(bake_head_shifts(copy.deepcopy(model), shifts), tokenizer, shifts,
                                         Path(scratch) / "baked")
            baked, _ = load_model(str(baked_dir), "cpu", cfg.dtype)
            steered = SteeredModel(pretrained=model, tokenizer=tokenizer, steer_path=str(steer_path),
                                   batch_size=cfg.batch_size)
            steered_samples, found = checked(steered, baked, f"{cfg.head_shifts} baked: validate_2fold's MC on the "
                                                             "baked folder vs lm-eval steered with the exported file")
            baked_lm = HFLM(pretrained=str(baked_dir), dtype=str(model.dtype).removeprefix("torch."), device="cpu",
                            batch_size=cfg.batch_size)
            gaps = lm_eval_gaps(steered_samples, lm_eval_samples(baked_lm, cfg.limit, cfg.tqa_path), plain,
                                model.dtype, num_layers, scale)
            print(f"\nlm-eval steered vs lm-eval hf on the baked folder: "
                  f"{'every answer agrees' if not gaps else f'{len(gaps)} answers differ'}")
            problems += found + gaps
    for problem in problems:
        print(f"DISAGREES: {problem}")
    print("\nall agree within the tolerance" if not problems else f"\n{len(problems)} disagreements")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    run_main(main)
