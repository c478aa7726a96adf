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
python validation/lm_eval_crosscheck.py --questions 208 262   # answers that start with a digit: boundary reported
python validation/lm_eval_crosscheck.py --limit 5 --head_shifts validation/results_dump/head_shifts_dump/RUN_fold_0_com
"""
import dataclasses
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import LmEvalCheckConfig  # noqa: E402
from iti.errors import UsageError  # noqa: E402

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


@cache
def task_manager(tqa_path: str | None):
    """Our task folder alone: indexing lm-eval's thousands of built-in tasks would take longer than the check."""
    from lm_eval.tasks import TaskManager

    from iti.lm_eval_steer import TASKS_DIR

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                       metadata={"tqa_path": tqa_path} if tqa_path else None)


def lm_eval_samples(lm, questions: list[int], tqa_path: str | None) -> dict[str, list[dict]]:
    """lm-eval's logged samples of the reference tasks on `questions` (MC-order indices), in that order."""
    from lm_eval import simple_evaluate

    from iti.lm_eval_steer import REFERENCE_TASKS

    results = simple_evaluate(model=lm, tasks=list(REFERENCE_TASKS), samples={t: questions for t in REFERENCE_TASKS},
                              log_samples=True, task_manager=task_manager(tqa_path))
    by_question = {task: {s["doc_id"]: s for s in results["samples"][task]} for task in REFERENCE_TASKS}
    return {task: [samples[q] for q in questions] for task, samples in by_question.items()}


def boundary_difference(lm, tokenizer, prompt: str, answer: str, context: str, continuation: str) -> str | None:
    """How lm-eval's tokens of (context, continuation) differ from ours of (prompt, answer), or None. lm-eval's
    split is its own _encode_pair, the one its loglikelihood scores with."""
    from iti.mc import tokenize_answer
    from iti.prompts import answer_prompt

    text = answer_prompt(prompt, answer)[0]
    if context + continuation != text:
        at = next((i for i, (a, b) in enumerate(zip(context + continuation, text)) if a != b),
                  min(len(text), len(context + continuation)))
        return f"the texts differ from character {at}: lm-eval {(context + continuation)[at:at + 30]!r}, ours " \
               f"{text[at:at + 30]!r}"
    context_ids, continuation_ids = lm._encode_pair(context, continuation)
    row = tokenize_answer(tokenizer, prompt, answer)
    if row.ids == context_ids + continuation_ids and row.first == len(context_ids):
        return None
    return (f"lm-eval scores {tokenizer.convert_ids_to_tokens(continuation_ids)[:3]}... ({len(continuation_ids)} "
            f"tokens after {len(context_ids)}), we score {tokenizer.convert_ids_to_tokens(row.ids[row.first:])[:3]}"
            f"... ({len(row.ids) - row.first} tokens after {row.first})")


def check_questions(lm, samples: dict[str, list[dict]], results, records, tokenizer, dtype, num_layers: int,
                    scale: float) -> list[QuestionCheck]:
    """lm-eval's samples against our MCResults (`results`, of `records`; both in the samples' order), answer by
    answer and question by question."""
    from iti.lm_eval_steer import REFERENCE_TASKS
    from iti.mc import mc_references, tokenize_answer
    from iti.metrics import mc1, mc2
    from iti.prompts import Prompting

    prompting = Prompting(instruction_prompt="none")
    checks = []
    for position, (record, result) in enumerate(zip(records, results)):
        ref, prompt = mc_references(record), prompting.prompt(record.question)
        # Each task's choices, in its order, with our scores: MC1 the best answer then the false ones, MC2 the true
        # then the false ones (validate_references in validation/lm_eval_tasks/truthfulqa_local.py).
        ours = {"truthfulqa_refs_mc1": zip([ref.best, *ref.false], [result.best_score, *result.false_scores]),
                "truthfulqa_refs_mc2": zip(ref.true + ref.false, result.true_scores + result.false_scores)}
        answers = []
        for task, scored in ours.items():
            sample = samples[task][position]
            for (context, continuation), theirs, (answer, score) in zip(sample["arguments"], sample["filtered_resps"],
                                                                        scored, strict=True):
                row = tokenize_answer(tokenizer, prompt, answer)
                tokens = len(row.ids) - row.first
                answers.append(AnswerCheck(task, answer, score, float(theirs[0]),
                                           answer_tolerance(dtype, num_layers, tokens, scale),
                                           boundary_difference(lm, tokenizer, prompt, answer, context, continuation)))
        checks.append(QuestionCheck(samples[REFERENCE_TASKS[0]][position]["doc_id"], ref.question, answers,
                                    (mc1(result), float(samples["truthfulqa_refs_mc1"][position]["acc"])),
                                    (mc2(result), float(samples["truthfulqa_refs_mc2"][position]["acc"])),
                                    result.best_score - max(result.false_scores)))
    return checks


def report(title: str, checks: list[QuestionCheck]) -> list[str]:
    """Print one line per question (and one per answer split differently, with the gap that split makes); return
    the problems."""
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
    split = [check.index for check in checks if check.boundary_answers]
    if split:
        print(f"questions {', '.join(map(str, split))}: their MC1/MC2 differ by the boundary tokens above (the "
              "answers split alike are still compared)")
    return problems


@dataclass
class CrossCheck:
    """The questions (MC-order indices and their records) scored both ways, on models of one tokenizer, dtype and
    depth; `scale` is the largest |logit| of the plain model on the first prompt (answer_tolerance)."""
    tokenizer: object
    questions: list[int]
    records: list
    tqa_path: str | None
    dtype: object
    num_layers: int
    scale: float

    @classmethod
    def of(cls, model, tokenizer, questions: list[int], tqa_path: str | None = None) -> "CrossCheck":
        from iti.data import load_truthfulqa
        from iti.geometry import head_geometry
        from iti.prompts import Prompting

        everything = load_truthfulqa(tqa_path).generation_in_mc_order()
        if max(questions) >= len(everything):
            raise UsageError(f"question {max(questions)} is beyond TruthfulQA's {len(everything)} questions (MC order, "
                             f"from 0); give indices below {len(everything)}")
        records = [everything[q] for q in questions]
        scale = logit_scale(model, tokenizer, Prompting(instruction_prompt="none").prompt(records[0].question))
        return cls(tokenizer, questions, records, tqa_path, model.dtype, head_geometry(model.config).num_layers, scale)

    def ours(self, model):
        """validate_2fold's MC results of `model` (unshifted) with --instruction_prompt none."""
        from iti.intervention import ShiftedModel
        from iti.mc import evaluate_mc
        from iti.prompts import Prompting

        prompting = Prompting(instruction_prompt="none")
        return evaluate_mc(ShiftedModel(model, None), self.tokenizer, self.records, prompting, progress=False)

    def covering(self, model) -> "CrossCheck":
        """The same check with its logit scale widened to `model`'s (a shifted model's logits may be larger)."""
        from iti.prompts import Prompting

        prompt = Prompting(instruction_prompt="none").prompt(self.records[0].question)
        return dataclasses.replace(self, scale=max(self.scale, logit_scale(model, self.tokenizer, prompt)))

    def samples(self, lm) -> dict[str, list[dict]]:
        return lm_eval_samples(lm, self.questions, self.tqa_path)

    def against_ours(self, lm, model) -> tuple[dict[str, list[dict]], list[QuestionCheck]]:
        """lm-eval's samples with `lm`, and each question checked against our scores of `model`."""
        samples = self.samples(lm)
        return samples, check_questions(lm, samples, self.ours(model), self.records, self.tokenizer, self.dtype,
                                        self.num_layers, self.scale)

    def gaps(self, lm, first: dict[str, list[dict]], second: dict[str, list[dict]]) -> list[str]:
        """Where two lm-eval runs (both split every answer alike: one tokenizer, one code) score an answer apart
        beyond the tolerance."""
        from iti.lm_eval_steer import REFERENCE_TASKS

        found = []
        for task in REFERENCE_TASKS:
            for one, other in zip(first[task], second[task]):
                for (context, continuation), a, b in zip(one["arguments"], one["filtered_resps"],
                                                         other["filtered_resps"]):
                    tokens = len(lm._encode_pair(context, continuation)[1])
                    tolerance = answer_tolerance(self.dtype, self.num_layers, tokens, self.scale)
                    if abs(a[0] - b[0]) > tolerance:
                        found.append(f"{task} question {one['doc_id']} {continuation.strip()!r}: {a[0]:.6f} vs "
                                     f"{b[0]:.6f} (tolerance {tolerance:.2g})")
        return found


def baked_and_steered(model, tokenizer, shifts, scratch: Path, batch_size: int):
    """`shifts` baked into a folder under `scratch` (reloaded from it) and lm-eval's steered model of `model` with
    their exported steer file."""
    import copy

    from lm_eval.models.hf_steered import SteeredModel

    from iti.bake import bake_head_shifts, save_baked_model
    from iti.lm_eval_steer import write_steer_file
    from iti.models import load_model

    steer_path = write_steer_file(shifts, model, scratch / "steer.pt")
    baked_dir = save_baked_model(bake_head_shifts(copy.deepcopy(model), shifts), tokenizer, shifts, scratch / "baked")
    baked, _ = load_model(str(baked_dir), "cpu", str(model.dtype).removeprefix("torch."))
    steered = SteeredModel(pretrained=model, tokenizer=tokenizer, steer_path=str(steer_path), batch_size=batch_size)
    return baked_dir, baked, steered


def main() -> None:
    cfg = parse_config(LmEvalCheckConfig, description=__doc__)

    import tempfile

    from lm_eval.models.huggingface import HFLM

    from iti.geometry import head_geometry
    from iti.head_shifts import HeadShifts
    from iti.models import gguf_to_folder, load_model, resolve_model_source

    source = resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path)
    folder = str(gguf_to_folder(source)) if source.endswith(".gguf") else source
    model, tokenizer = load_model(folder, "cpu", cfg.dtype, cfg.trust_remote_code)
    shifts = None if cfg.head_shifts is None else HeadShifts.load(cfg.head_shifts)
    if shifts is not None:
        shifts.check_geometry(head_geometry(model.config))
    check = CrossCheck.of(model, tokenizer, list(cfg.questions) or list(range(cfg.limit)), cfg.tqa_path)
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    problems = report(f"{folder}: validate_2fold's MC (--instruction_prompt none) vs lm-eval hf",
                      check.against_ours(plain, model)[1])
    if shifts is not None:
        with tempfile.TemporaryDirectory() as scratch:
            baked_dir, baked, steered = baked_and_steered(model, tokenizer, shifts, Path(scratch), cfg.batch_size)
            check = check.covering(baked)
            steered_samples, checks = check.against_ours(steered, baked)
            problems += report(f"{cfg.head_shifts}: validate_2fold's MC on the baked folder vs lm-eval steered with "
                               "the exported steer file", checks)
            baked_lm = HFLM(pretrained=str(baked_dir), dtype=str(model.dtype).removeprefix("torch."), device="cpu",
                            batch_size=cfg.batch_size)
            gaps = check.gaps(plain, steered_samples, check.samples(baked_lm))
            print(f"\nlm-eval steered vs lm-eval hf on the baked folder: "
                  f"{'every answer agrees' if not gaps else f'{len(gaps)} answers differ'}")
            problems += gaps
    for problem in problems:
        print(f"DISAGREES: {problem}")
    print("\nall agree within the tolerance" if not problems else f"\n{len(problems)} disagreements")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    run_main(main)
