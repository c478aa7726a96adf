"""Cross-entropy on OpenWebText and KL from the unshifted model (docs/method.md §6).

Documents drawn with the run's seed, each cut to its first 128 tokens, the shift at every position. Per document:
CE is the mean next-token cross-entropy of the shifted model; KL is Σ over positions and vocabulary of
p_orig·log(p_orig/p_shifted) divided by the positions. Right-padded batches; padding is neither shifted nor counted.
Several settings of head shifts (one ShiftedModel) share the unshifted reference; per batch of documents, the rows
of (setting, document) run in forwards of at most the batch size, so a full batch is one setting's documents.
"""
from __future__ import annotations

from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from iti.batching import length_sorted_batches, pad_batch, pad_token_id
from iti.constants import OWT_SAMPLES
from iti.errors import UsageError
from iti.files import read_jsonl, read_text
from iti.intervention import ShiftedModel, only_setting
from iti.models import input_device, softmax_precision

OWT_HUB_ID = "stas/openwebtext-10k"
MAX_TOKENS = 128


def read_owt_file(path: str | Path) -> list[str]:
    """Documents of a local file: `.jsonl` (one JSON object with a "text" field per line) or
    plain text (documents separated by blank lines)."""
    path = Path(path).expanduser()  # its existence is an option check (iti.options, file="read")
    if path.suffix == ".jsonl":
        texts = []
        for number, record in read_jsonl(path, "--owt_path"):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UsageError(f"{path} line {number} has no string field \"text\"")
            texts.append(record["text"])
    else:
        lines = read_text(path, "--owt_path").splitlines()
        texts = ["\n".join(block) for filled, block in groupby(lines, key=lambda line: bool(line.strip())) if filled]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UsageError(f"--owt_path {path} holds no documents")
    return texts


def load_owt_texts(owt_path: str | Path | None) -> tuple[list[str] | None, str]:
    """(documents, where from) from `owt_path`, else the hub; (None, why) when the hub cannot be reached: that
    only leaves CE and KL empty, while a path given but unusable is the user's error (UsageError)."""
    if owt_path is not None:
        return read_owt_file(owt_path), str(owt_path)
    from datasets import load_dataset

    try:
        data = load_dataset(OWT_HUB_ID, split="train")
    except Exception as err:  # any failure of the hub or of the dataset library means: no OWT here
        first_line = str(err).splitlines()[0] if str(err) else ""
        return None, f"OpenWebText ({OWT_HUB_ID}) could not be loaded: {type(err).__name__}: {first_line}; pass --owt_path"
    return [t for t in data["text"] if t.strip()], f"hub:{OWT_HUB_ID}"


def sample_token_rows(texts: list[str], tokenizer, num_samples: int = OWT_SAMPLES, max_tokens: int = MAX_TOKENS,
                      seed: int = 42) -> list[list[int]]:
    """`num_samples` documents (all, when there are fewer) drawn without replacement, each cut to
    its first `max_tokens` tokens; documents of fewer than 2 tokens have no next token and are refused."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(texts), size=min(num_samples, len(texts)), replace=False)
    rows = [tokenizer(texts[i])["input_ids"][:max_tokens] for i in picks]
    if any(len(r) < 2 for r in rows):
        raise UsageError("an OpenWebText document has fewer than 2 tokens; remove empty documents")
    return rows


@torch.inference_mode()
def reference_logits(model, token_rows: list[list[int]], pad_id: int, batch_size: int = 8,
                     progress: bool = True) -> list[torch.Tensor]:
    """The unshifted model's logits per length-sorted batch of `token_rows`, in the model's dtype on CPU: what KL
    compares every shifted model with. They depend on neither fold nor α/K, so a run computes them once (CeKl)."""
    device = input_device(model)
    logits = []
    for batch in tqdm(length_sorted_batches([len(r) for r in token_rows], batch_size), desc="CE/KL reference",
                      disable=not progress):
        ids, mask = pad_batch([token_rows[i] for i in batch], pad_id)
        logits.append(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.cpu())
    return logits


@torch.inference_mode()
def ce_and_kl_per_setting(shifted: ShiftedModel, token_rows: list[list[int]], pad_id: int, batch_size: int = 8,
                          with_kl: bool = True, progress: bool = True, reference: list[torch.Tensor] | None = None
                          ) -> list[tuple[list[float], list[float] | None]]:
    """Per setting of `shifted`, per row (document) in batch order: CE and KL(original ‖ shifted); KL None unless
    `with_kl`, exactly 0 for a setting that shifts nothing. `reference`: reference_logits of these rows and batch
    size, else computed here when KL needs it."""
    settings = range(len(shifted.settings))
    shifting = [s for s in settings if shifted.shifts_setting(s)]
    plain = [s for s in settings if not shifted.shifts_setting(s)]
    ce: list[list[float]] = [[] for _ in settings]
    kl: list[list[float]] = [[] for _ in settings]
    batches = length_sorted_batches([len(r) for r in token_rows], batch_size)
    if reference is None and with_kl and shifting:
        reference = reference_logits(shifted.model, token_rows, pad_id, batch_size, progress=False)
    for number, batch in enumerate(tqdm(batches, desc="CE/KL", disable=not progress)):
        ids, mask = pad_batch([token_rows[i] for i in batch], pad_id)
        lengths = mask.sum(1).tolist()
        original = reference[number] if reference is not None else None
        if plain:
            # A setting that shifts nothing is the original model: the reference logits are its logits.
            logits = original if original is not None else shifted(ids, mask, settings=torch.full((len(batch),),
                                                                                                  plain[0])).logits
            values = [_ce(_log_probs(logits[b, :length]), ids[b, 1:length]) for b, length in enumerate(lengths)]
            for s in plain:
                ce[s] += values
                kl[s] += [0.0] * len(values)
        pairs = [(s, b) for s in shifting for b in range(len(batch))]
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            rows = [b for _, b in chunk]
            width = max(lengths[b] for b in rows)
            logits = shifted(ids[rows, :width], mask[rows, :width], shift_mask=mask[rows, :width],
                             settings=torch.tensor([s for s, _ in chunk])).logits
            for j, (s, b) in enumerate(chunk):
                length = lengths[b]
                # Row by row, so float32 log-probabilities of one [seq, vocab] slice exist at a time.
                log_p = _log_probs(logits[j, :length])
                ce[s].append(_ce(log_p, ids[b, 1:length]))
                if with_kl:
                    log_q = _log_probs(original[b, :length].to(log_p.device))
                    kl[s].append(float((log_q.exp() * (log_q - log_p)).double().sum() / length))
    return [(ce[s], kl[s] if with_kl else None) for s in settings]


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(softmax_precision(logits), dim=-1)


def _ce(log_p: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean next-token cross-entropy of one row, from its [length, vocab] log-probabilities."""
    targets = targets.to(log_p.device)
    return float(-log_p[torch.arange(len(targets), device=log_p.device), targets].double().mean())


def ce_and_kl(shifted: ShiftedModel, token_rows: list[list[int]], pad_id: int, batch_size: int = 8,
              with_kl: bool = True, progress: bool = True,
              reference: list[torch.Tensor] | None = None) -> tuple[list[float], list[float] | None]:
    """ce_and_kl_per_setting of a ShiftedModel of one setting."""
    return only_setting(ce_and_kl_per_setting(shifted, token_rows, pad_id, batch_size, with_kl, progress, reference))


class CeKl:
    """CE and KL of shifted versions of one model on one seeded sample of documents, one per run: the unshifted
    reference logits, computed on first use, serve every fold and α/K setting. They stay in CPU memory (0.5 GB
    for 20 documents of the bundled model, 2.5 GB for docs/method.md's 100)."""

    def __init__(self, texts: list[str] | None, tokenizer, seed: int = 42, batch_size: int = 8,
                 num_samples: int = OWT_SAMPLES):
        self.rows = sample_token_rows(texts, tokenizer, num_samples, MAX_TOKENS, seed) if texts is not None else None
        self.pad_id = pad_token_id(tokenizer)
        self.batch_size = batch_size
        self._reference: tuple[object, list[torch.Tensor]] | None = None

    def reference(self, model, progress: bool = True) -> list[torch.Tensor]:
        if self._reference is None or self._reference[0] is not model:
            self._reference = (model, reference_logits(model, self.rows, self.pad_id, self.batch_size, progress))
        return self._reference[1]

    def per_setting(self, shifted: ShiftedModel, options: set[str],
                    progress: bool = True) -> list[dict[str, list[float]]]:
        """Per setting of `shifted`, {"ce": […], "kl": […]}: per sampled document, for the --metrics options asked;
        empty without documents."""
        wanted = {"ce", "kl"} & set(options)
        settings = range(len(shifted.settings))
        if not wanted:
            return [{} for _ in settings]
        if self.rows is None:
            return [{name: [] for name in sorted(wanted)} for _ in settings]
        with_kl = "kl" in wanted
        plain = not all(shifted.shifts_setting(s) for s in settings)
        reference = self.reference(shifted.model, progress) if with_kl or plain else None
        per_setting = ce_and_kl_per_setting(shifted, self.rows, self.pad_id, self.batch_size, with_kl, progress,
                                            reference)
        return [{"ce": ce, **({"kl": kl} if with_kl else {})} for ce, kl in per_setting]

    def per_document(self, shifted: ShiftedModel, options: set[str], progress: bool = True) -> dict[str, list[float]]:
        """per_setting of a ShiftedModel of one setting."""
        return only_setting(self.per_setting(shifted, options, progress))
