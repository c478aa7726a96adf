"""CE and KL: the batched computation against one document at a time (legacy/ce_kl.py: plain hooks
shifting every position), KL exactly 0 at α = 0, the OWT file formats and the no-OWT case."""
import json
import math

import numpy as np
import pytest

from iti.ce_kl import CeKl, ce_and_kl, load_owt_texts, read_owt_file, sample_token_rows
from iti.errors import UsageError
from iti.intervention import ShiftedModel
from iti.metrics import document_mean
from legacy.ce_kl import ce_kl as reference_ce_kl
from tests.conftest import make_shifts

DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog. It was not amused, and neither was the farmer.",
    "Stocks rose on Tuesday.",
    "In 1969, astronauts landed on the Moon.\nThe mission was called Apollo 11, and it returned safely.",
    "A short one.",
    "Recipes: mix flour, water and salt; knead for ten minutes; bake at 220 degrees until golden brown.",
]


@pytest.mark.parametrize("with_shift", [False, True])
def test_batched_ce_kl_equal_document_by_document(tiny, with_shift):
    model, tokenizer = tiny
    shifts = make_shifts(model, alpha=6.0) if with_shift else None
    rows = [tokenizer(doc)["input_ids"][:20] for doc in DOCUMENTS]
    per_document = ce_and_kl(ShiftedModel(model, shifts), rows, tokenizer.pad_token_id, batch_size=3, progress=False)
    assert [len(values) for values in per_document] == [len(rows), len(rows)]
    ce, kl = map(document_mean, per_document)
    expected_ce, expected_kl = reference_ce_kl(model, rows, shifts, progress=False)
    assert ce == pytest.approx(expected_ce, abs=1e-4)
    assert kl == pytest.approx(expected_kl, abs=1e-4)
    if with_shift:
        assert kl > 1e-3  # the shift changed the distribution, so the KL comparison means something
    else:
        assert kl == 0.0


def test_kl_is_exactly_zero_at_alpha_zero(tiny):
    """Heads selected but α = 0: the shift runs and adds nothing, so both passes agree bit for bit."""
    model, tokenizer = tiny
    shifted = ShiftedModel(model, make_shifts(model).scaled(0.0))
    assert shifted.active
    rows = [tokenizer(doc)["input_ids"] for doc in DOCUMENTS]
    ce, kl = map(document_mean, ce_and_kl(shifted, rows, tokenizer.pad_token_id, batch_size=2, progress=False))
    assert kl == 0.0
    assert ce == pytest.approx(reference_ce_kl(model, rows, None, progress=False)[0], abs=1e-4)


def test_reference_computed_once_and_reused_across_settings(tiny, monkeypatch):
    """One CeKl serves several shifted versions of a model: the unshifted pass runs once, and each
    setting's CE and KL equal legacy's."""
    import iti.ce_kl as ce_kl_module

    model, tokenizer = tiny
    calls = []
    real = ce_kl_module.reference_logits
    monkeypatch.setattr(ce_kl_module, "reference_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    ce_kl = CeKl(DOCUMENTS, tokenizer, seed=3, batch_size=2, num_samples=4)
    base = make_shifts(model)
    for alpha in (1.0, 2.5):
        shifts = base.scaled(alpha)
        per_document = ce_kl.per_document(ShiftedModel(model, shifts), {"ce", "kl"}, progress=False)
        values = {name: document_mean(v) for name, v in per_document.items()}
        expected_ce, expected_kl = reference_ce_kl(model, ce_kl.rows, shifts, progress=False)
        assert values["ce"] == pytest.approx(expected_ce, abs=1e-4)
        assert values["kl"] == pytest.approx(expected_kl, abs=1e-4) and values["kl"] > 1e-4
    unshifted = {name: document_mean(v)
                 for name, v in ce_kl.per_document(ShiftedModel(model, None), {"ce", "kl"}, progress=False).items()}
    assert unshifted["ce"] == pytest.approx(reference_ce_kl(model, ce_kl.rows, None, progress=False)[0], abs=1e-4)
    assert unshifted["kl"] == 0.0
    assert len(calls) == 1


def test_owt_files(tmp_path):
    text = tmp_path / "owt.txt"
    text.write_text("first document\nsecond line of it\n\n\n  \nsecond document\n\nthird\n")
    assert read_owt_file(text) == ["first document\nsecond line of it", "second document", "third"]
    jsonl = tmp_path / "owt.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["a b", "c\n\nd"])) + "\n")
    assert read_owt_file(jsonl) == ["a b", "c\n\nd"]
    assert load_owt_texts(jsonl) == (["a b", "c\n\nd"], str(jsonl))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_owt_file_with_a_byte_order_mark(tmp_path, suffix):
    path = tmp_path / f"owt{suffix}"
    content = "first\n\nsecond\n" if suffix == ".txt" else '{"text": "first"}\n{"text": "second"}\n'
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    assert read_owt_file(path) == ["first", "second"]


@pytest.mark.parametrize("content, suffix, message", [
    (None, ".txt", r"cannot be read \(No such file or directory\)"),
    ("\n\n  \n", ".txt", "holds no documents"),
    ('{"text": "ok"}\nnot json\n', ".jsonl", "line 2 is not JSON"),
    ('{"body": "no text field"}\n', ".jsonl", 'line 1 has no string field "text"'),
    ("caf\u00e9\n".encode("latin-1"), ".txt", r"is not UTF-8 text: byte 3 \(0xe9\)"),
    ('{"text": "x"}\n{"text": "\u00ff"}'.encode("latin-1"), ".jsonl", r"is not UTF-8 text: byte 24 \(0xff\)"),
])
def test_bad_owt_files(tmp_path, content, suffix, message):
    path = tmp_path / f"owt{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_owt_file(path)


def test_samples_are_seeded_and_cut(tokenizer):
    texts = [f"document number {i} " + "word " * (i * 40) for i in range(12)]
    rows = sample_token_rows(texts, tokenizer, num_samples=5, max_tokens=128, seed=7)
    again = sample_token_rows(texts, tokenizer, num_samples=5, max_tokens=128, seed=7)
    other = sample_token_rows(texts, tokenizer, num_samples=5, max_tokens=128, seed=8)
    assert rows == again and rows != other and len(rows) == 5
    picks = np.random.default_rng(7).choice(12, size=5, replace=False)
    assert rows == [tokenizer(texts[i])["input_ids"][:128] for i in picks]
    assert max(len(r) for r in rows) == 128
    assert len(sample_token_rows(texts[:3], tokenizer, num_samples=100)) == 3


def test_no_owt_leaves_metrics_empty(tiny, monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    texts, reason = load_owt_texts(None)
    assert texts is None and "stas/openwebtext-10k" in reason and "--owt_path" in reason
    model, tokenizer = tiny
    values = CeKl(None, tokenizer).per_document(ShiftedModel(model, None), {"mc", "ce", "kl"})
    assert values == {"ce": [], "kl": []} and all(math.isnan(document_mean(v)) for v in values.values())
    assert CeKl(None, tokenizer).per_document(ShiftedModel(model, None), {"mc"}) == {}
