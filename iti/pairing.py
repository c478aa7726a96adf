"""Whether two validate_2fold runs pair. A paired difference (iti.statistics) subtracts, question by question,
one run's score from another's; it measures what the two runs were meant to differ in (the head shifts, the
prompt) only when both scored the same questions of the same data, in the same folds, with the same model in
the same precision. A float16 and a float32 load of one checkpoint are two numeric models (their scores differ
by rounding), so they do not pair either.

Records name the model by the digest of its fingerprint as loaded (identity `model_path`, dtype included) and the
data by the digest of the evaluated items (identity `tqa_path` or `dataset_path`). Records of versions before
identities are compared by what they recorded: the model and data as named, the questions and the folds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iti.fingerprint import differs
from iti.identity import short_digest

if TYPE_CHECKING:
    from iti.runs import RunRecord


def why_unpaired(run: RunRecord, baseline: RunRecord) -> str | None:
    """Why the paired difference of `run` from `baseline` would compare unlike things, in one line naming what
    differs with both values (the run's first), or None when they pair."""
    reasons = [reason for reason in (_model_differs(run, baseline), _questions_differ(run, baseline)) if reason]
    return "; ".join(reasons) or None


def _model_differs(run: RunRecord, baseline: RunRecord) -> str | None:
    fingerprinted = run.identity is not None and baseline.identity is not None
    (model, dtype), (other, other_dtype) = _model(run, fingerprinted), _model(baseline, fingerprinted)
    if (model, dtype) == (other, other_dtype):
        return None
    fingerprints = _fingerprint(run), _fingerprint(baseline)
    why = differs(*fingerprints) if None not in fingerprints else None
    same_weights = model == other if None in fingerprints else why is None
    if same_weights and dtype != other_dtype:
        return f"the same model in another dtype: {dtype} against {other_dtype}"
    shown = [f"{name} ({record.resolved.model_source})" if record.resolved.model_source else name
             for name, record in ((model, run), (other, baseline))]
    if dtype != other_dtype:
        shown = [f"{name} in {kind}" for name, kind in zip(shown, (dtype, other_dtype))]
    return f"the models differ: {shown[0]} against {shown[1]}" + (f", {why}" if why else "")


def _fingerprint(record: RunRecord) -> dict[str, Any] | None:
    """The model's fingerprint as loaded, where the record holds the one its identity digests (records of
    earlier versions hold none)."""
    fingerprint = record.resolved.model_fingerprint
    if fingerprint is None or record.identity is None or short_digest(fingerprint) != record.identity["model_path"]:
        return None
    return fingerprint


def _model(record: RunRecord, fingerprinted: bool) -> tuple[str, str | None]:
    """(the model, its dtype): its fingerprint's digest as loaded where both records have one, else as named."""
    if fingerprinted:
        return record.identity["model_path"], record.identity["dtype"]
    config = record.config
    named = config.get("model_path") or f"{config.get('model_prefix') or ''}{config.get('model_name')}"
    return named, record.resolved.model_dtype or config.get("dtype")


def _questions_differ(run: RunRecord, baseline: RunRecord) -> str | None:
    """The data, then the number of questions, then the folds' test questions: the first that differs."""
    digested = run.identity is not None and baseline.identity is not None
    (data, shown), (other, other_shown) = (_data(record, digested) for record in (run, baseline))
    counts = run.resolved.questions, baseline.resolved.questions
    if None not in counts and counts[0] != counts[1]:
        return f"the questions differ: {counts[0]} of {shown} against {counts[1]} of {other_shown}"
    if data != other:
        return f"the data differ: {shown} against {other_shown}"
    return _folds_differ(run, baseline)


def _data(record: RunRecord, digested: bool) -> tuple[str, str]:
    """The evaluated items as compared, and as shown: their digest (shown with the file they came from, which may
    lie anywhere) where both records have one, else the file as named."""
    config = record.config
    named = config.get("dataset_path") or config.get("tqa_path") or "TruthfulQA"
    if not digested:
        return named, named
    items = record.identity.get("dataset_path") or record.identity.get("tqa_path")
    source = record.resolved.tqa_source or named
    return (items, f"{source} ({items[:8]})") if items else (source, source)


def _folds_differ(run: RunRecord, baseline: RunRecord) -> str | None:
    """How many folds, then each fold's test questions (the seed draws only the training questions)."""
    tests = [{fold.fold: fold.test for fold in record.folds} for record in (run, baseline)]
    if len(tests[0]) != len(tests[1]):
        return f"the folds differ: {len(tests[0])} against {len(tests[1])}"
    for fold in sorted(tests[0]):
        if tests[0][fold] != tests[1].get(fold):
            lists = [short_digest(test.get(fold)) for test in tests]
            return f"the folds differ: fold {fold} tests questions {lists[0]} against {lists[1]} (digests of the lists)"
    return None
