"""ShiftedModel (pyvene, batched, KV cache) against the legacy hook path (one sequence, no cache).

Every schedule of docs/method.md §5 on the three tiny shapes with mixed-length padded batches: the last
prompt token and each generated token (left padding, KV cache), the answer tokens (explicit
mask), every position. Plus: α = 0 changes nothing, and the shift lands exactly on the
selected heads' slices and the scheduled positions, never on padding.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from iti.geometry import head_geometry
from iti.intervention import ShiftedModel
from iti.models import get_o_proj
from legacy.ce_kl import sample_ce, sample_kl
from legacy.generation import greedy_generate
from legacy.intervention import shifted_logits
from legacy.judge import judge_score, yes_token_id
from legacy.mc import answer_log_prob, answer_positions, mc_metrics
from tests.conftest import PROMPTS, make_shifts, pad

QA = [
    ("Q: Are bats blind?\nA: ", "No, bats can see."),
    ("Q: Hi\nA: ", "Hello."),
    ("Q: What happens if you swallow gum? Be precise.\nA: ", "It passes through you."),
]


@contextmanager
def o_proj_inputs(module):
    """Record a module's input by wrapping its forward: pyvene strips hooks, not instance attributes.

    pyvene's own hook on the o_proj input runs before forward, so this sees the shifted input."""
    seen = []
    original = module.forward

    def forward(x, *args, **kwargs):
        seen.append(x.detach().clone())
        return original(x, *args, **kwargs)

    module.forward = forward
    try:
        yield seen
    finally:
        del module.forward


def test_every_position_matches_hooks_on_padded_batch(tiny):
    model, tokenizer = tiny
    shifts = make_shifts(model)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS]
    ids, mask = pad(sequences, tokenizer.pad_token_id, "right")
    with torch.no_grad():
        batched = ShiftedModel(model, shifts)(ids, mask).logits
    for row, seq in enumerate(sequences):
        expected = shifted_logits(model, seq, shifts, start=0)
        torch.testing.assert_close(batched[row, :len(seq)], expected, rtol=1e-4, atol=1e-4)
        assert (expected - shifted_logits(model, seq, None, 0)).abs().max() > 1e-2, "shift too small to test"


def test_answer_token_mask_matches_hooks(tiny):
    model, tokenizer = tiny
    shifts = make_shifts(model)
    spans = [answer_positions(tokenizer, context, answer) for context, answer in QA]
    for (ids, first), (_, answer) in zip(spans, QA):
        assert tokenizer.decode(ids[first:]).strip() == answer
    ids, mask = pad([s for s, _ in spans], tokenizer.pad_token_id, "right")
    shift_mask = torch.zeros_like(mask)
    for row, (seq, first) in enumerate(spans):
        shift_mask[row, first:len(seq)] = 1
    with torch.no_grad():
        batched = ShiftedModel(model, shifts)(ids, mask, shift_mask=shift_mask).logits
    for row, ((seq, first), (context, answer)) in enumerate(zip(spans, QA)):
        expected = shifted_logits(model, seq, shifts, start=first)
        torch.testing.assert_close(batched[row, :len(seq)], expected, rtol=1e-4, atol=1e-4)
        # The answer's summed log-probability from the batched logits, against legacy/mc.py.
        log_probs = torch.log_softmax(batched[row].double(), -1)
        summed = sum(float(log_probs[i - 1, seq[i]]) for i in range(first, len(seq)))
        assert answer_log_prob(model, tokenizer, context, answer, shifts) == pytest.approx(summed, abs=1e-3)
        plain = answer_log_prob(model, tokenizer, context, answer, None)
        # The first answer token is predicted from the unshifted context; the later ones move.
        assert abs(plain - summed) > 1e-3


def test_generation_with_cache_on_left_padded_batch_matches_no_cache_hooks(tiny):
    model, tokenizer = tiny
    shifts = make_shifts(model)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS]
    ids, mask = pad(sequences, tokenizer.pad_token_id, "left")
    steps = 6
    out = ShiftedModel(model, shifts).generate(
        ids, mask, max_new_tokens=steps, do_sample=False, output_scores=True, return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id)
    for row, seq in enumerate(sequences):
        tokens, logits = greedy_generate(model, seq, shifts, max_new_tokens=steps, return_logits=True)
        got = out.sequences[row, ids.shape[1]:].tolist()
        # A row that stops at eos early is padded by generate while the others go on.
        assert got[:len(tokens)] == tokens and all(t == tokenizer.pad_token_id for t in got[len(tokens):])
        torch.testing.assert_close(torch.stack([s[row] for s in out.scores[:len(tokens)]]), logits,
                                   rtol=1e-4, atol=1e-4)
        assert greedy_generate(model, seq, None, max_new_tokens=steps) != tokens, "shift too small to test"


def test_legacy_generation_stops_at_eos(tiny):
    model, tokenizer = tiny
    seq = tokenizer(PROMPTS[0])["input_ids"]
    free = greedy_generate(model, seq, None, max_new_tokens=10, eos_token_id=[])
    assert len(free) == 10
    # Declaring a greedy token eos ends decoding right after its first occurrence (kept, as generate does).
    k = [i for i, t in enumerate(free) if t not in free[:i]][-1]
    assert greedy_generate(model, seq, None, max_new_tokens=10, eos_token_id=[free[k]]) == free[:k + 1]


def test_alpha_zero_leaves_logits_exactly_unchanged(tiny):
    model, tokenizer = tiny
    shifts = make_shifts(model).scaled(0.0)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS]
    ids, mask = pad(sequences, tokenizer.pad_token_id, "right")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(ShiftedModel(model, shifts)(ids, mask).logits, plain)
    ids, mask = pad(sequences, tokenizer.pad_token_id, "left")
    kwargs = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=tokenizer.pad_token_id)
    shifted_out = ShiftedModel(model, shifts).generate(ids, mask, **kwargs)
    plain_out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(shifted_out.sequences, plain_out.sequences)
    assert all(torch.equal(a, b) for a, b in zip(shifted_out.scores, plain_out.scores))


def test_shift_lands_only_on_selected_slices_and_positions(tiny):
    """All shifted heads in one layer: its o_proj input differs from the unshifted run by exactly δ."""
    model, tokenizer = tiny
    geo = head_geometry(model.config)
    d = geo.head_dim
    heads = [(1, 0), (1, 2)]
    shifts = make_shifts(model, heads, alpha=2.5, seed=3)
    zero = shifts.scaled(0.0)
    expected_delta = torch.zeros(geo.width, dtype=torch.float64)
    for (_, head), theta, sigma in zip(heads, shifts.directions, shifts.sigmas):
        expected_delta[head * d:(head + 1) * d] = 2.5 * sigma * torch.as_tensor(theta, dtype=torch.float64)
    o_proj = get_o_proj(model, 1)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS]
    ids, mask = pad(sequences, tokenizer.pad_token_id, "right")
    shift_mask = mask.clone()
    shift_mask[:, :3] = 0  # an answer-like mask: real tokens from position 3 on

    def difference(run):
        captured = {}
        for name, s in (("on", shifts), ("off", zero)):
            with o_proj_inputs(o_proj) as seen, torch.no_grad():
                run(ShiftedModel(model, s))
            captured[name] = seen[0].double()
        return captured["on"] - captured["off"]

    for positions, run in ((mask, lambda m: m(ids, mask)), (shift_mask, lambda m: m(ids, mask, shift_mask=shift_mask))):
        diff = difference(run)
        on = positions.bool()
        torch.testing.assert_close(diff[on], expected_delta.expand(int(on.sum()), -1), rtol=0, atol=1e-5)
        assert torch.equal(diff[~on], torch.zeros_like(diff[~on])), "unscheduled or padding positions moved"
        assert not mask.bool().all(), "the batch must contain padding"

    # Generation: the prompt's forward shifts only each row's last (real, left-padded) token.
    ids, mask = pad(sequences, tokenizer.pad_token_id, "left")
    diff = difference(lambda m: m.generate(ids, mask, max_new_tokens=1, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id))
    torch.testing.assert_close(diff[:, -1], expected_delta.expand(len(sequences), -1), rtol=0, atol=1e-5)
    assert torch.equal(diff[:, :-1], torch.zeros_like(diff[:, :-1]))


def test_legacy_ce_and_kl_agree_with_pyvene_logits(tiny):
    model, tokenizer = tiny
    shifts = make_shifts(model)
    seq = tokenizer("The quick brown fox jumps over the lazy dog, then sleeps in the warm sun.")["input_ids"]
    ids = torch.tensor([seq])
    with torch.no_grad():
        pyvene_logits = ShiftedModel(model, shifts)(ids).logits[0].double()
        plain_logits = model(input_ids=ids).logits[0].double()
    ce = float(torch.nn.functional.cross_entropy(pyvene_logits[:-1], ids[0, 1:]))
    assert sample_ce(model, seq, shifts) == pytest.approx(ce, abs=1e-4)
    p = torch.softmax(plain_logits, -1)
    q = torch.softmax(pyvene_logits, -1)
    kl = float((p * (p / q).log()).sum()) / len(seq)
    assert kl > 1e-3
    assert sample_kl(model, seq, shifts) == pytest.approx(kl, rel=1e-3)
    assert sample_kl(model, seq, None) == 0.0


def test_mc_metrics_closed_form():
    got = mc_metrics([-1.0, -3.0, -2.5], [-2.0, -4.0], best_score=-1.0)
    true, false = math.exp(-1) + math.exp(-3) + math.exp(-2.5), math.exp(-2) + math.exp(-4)
    assert got == {"MC1": 1.0, "MC2": pytest.approx(true / (true + false)), "MC3": pytest.approx(1 / 3)}
    assert mc_metrics([-1.0, -3.0], [-2.0], best_score=-3.0)["MC1"] == 0.0
    # A tie is not a win.
    assert mc_metrics([-2.0], [-2.0], best_score=-2.0)["MC1"] == 0.0


def test_legacy_judge_reads_next_token_probability_of_yes(tiny):
    model, tokenizer = tiny
    question, answer = "Are bats blind?", "No."
    ids = tokenizer(f"Q: {question}\nA: {answer}\nTrue:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1], -1)
    yes = yes_token_id(tokenizer)
    assert tokenizer.decode([yes]) == " yes"
    assert judge_score(model, tokenizer, question, answer, "truth") == pytest.approx(float(probs[yes]), rel=1e-4)


@pytest.mark.slow
def test_bundled_model_generation_matches_hooks(bundled):
    model, tokenizer = bundled
    shifts = make_shifts(model, [(3, 1), (10, 4), (10, 7), (25, 0)], alpha=8.0)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    ids, mask = pad(sequences, tokenizer.pad_token_id, "left")
    out = ShiftedModel(model, shifts).generate(ids, mask, max_new_tokens=6, do_sample=False,
                                               pad_token_id=tokenizer.pad_token_id)
    for row, seq in enumerate(sequences):
        tokens = greedy_generate(model, seq, shifts, max_new_tokens=6)
        got = out[row, ids.shape[1]:].tolist()
        assert got[:len(tokens)] == tokens
        assert all(t == tokenizer.pad_token_id for t in got[len(tokens):])


def test_public_interventions_dict_by_hand():
    from utils import get_interventions_dict

    rng = np.random.default_rng(0)
    tuning = rng.standard_normal((50, 3, 4, 5))
    com = rng.standard_normal((12, 5))
    got = get_interventions_dict([(2, 1), (0, 3), (2, 0)], None, tuning, 4, True, False, com)
    assert list(got) == ["model.layers.2.self_attn.o_proj", "model.layers.0.self_attn.o_proj"]
    assert [head for head, _, _ in got["model.layers.2.self_attn.o_proj"]] == [0, 1]
    for key, layer in (("model.layers.2.self_attn.o_proj", 2), ("model.layers.0.self_attn.o_proj", 0)):
        for head, direction, std in got[key]:
            theta = com[layer * 4 + head] / np.linalg.norm(com[layer * 4 + head])
            np.testing.assert_allclose(direction, theta, rtol=1e-12)
            assert std == pytest.approx(np.std(tuning[:, layer, head] @ theta), rel=1e-12)


def test_legacy_extraction_matches_batched_extraction(tiny):
    from iti.activations import ActivationRecorder, extract_activations
    from legacy.extraction import get_activations

    model, tokenizer = tiny
    geo = head_geometry(model.config)
    batched = {"head_wise": np.zeros((len(PROMPTS), geo.num_layers, geo.width), np.float32),
               "layer_wise": np.zeros((len(PROMPTS), geo.num_layers + 1, geo.hidden_size), np.float32)}
    extract_activations(ActivationRecorder(model), tokenizer, PROMPTS, batched, batch_size=3, progress=False)
    head_wise, layer_wise = get_activations(model, tokenizer, PROMPTS, progress=False)
    np.testing.assert_allclose(head_wise, batched["head_wise"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer_wise, batched["layer_wise"], rtol=1e-4, atol=1e-4)
