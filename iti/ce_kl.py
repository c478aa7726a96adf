"""Cross-entropy on OpenWebText and KL from the unshifted model (docs/method.md §6).

Documents drawn with the run's seed, each cut to its first 128 tokens, the shift at every position. Per document:
CE is the mean next-token cross-entropy of the shifted model; KL is Σ over positions and vocabulary of
p_orig·log(p_orig/p_shifted) divided by the positions. Right-padded batches; padding is neither shifted nor counted.
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
from iti.intervention import ShiftedModel
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
def ce_and_kl(shifted: ShiftedModel, token_rows: list[list[int]], pad_id: int, batch_size: int = 8,
              with_kl: bool = True, progress: bool = True,
              reference: list[torch.Tensor] | None = None) -> tuple[list[float], list[float] | None]:
    """Per row (document), in batch order: the shifted model's CE and KL(original ‖ shifted); KL None unless
    `with_kl`. `reference`: reference_logits of these rows and batch size, else computed here when KL needs it."""
    ce, kl = [], []
    batches = length_sorted_batches([len(r) for r in token_rows], batch_size)
    if reference is None and with_kl and shifted.active:
        reference = reference_logits(shifted.model, token_rows, pad_id, batch_size, progress=False)
    for number, batch in enumerate(tqdm(batches, desc="CE/KL", disable=not progress)):
        ids, mask = pad_batch([token_rows[i] for i in batch], pad_id)
        # An inactive shift leaves the model its own original: the reference logits are its logits.
        logits = reference[number] if reference is not None and not shifted.active \
            else shifted(ids, mask, shift_mask=mask).logits
        original = reference[number].to(logits.device) if with_kl and shifted.active else None
        # Row by row, so float32 log-probabilities of one [seq, vocab] slice exist at a time.
        for b, length in enumerate(mask.sum(1).tolist()):
            log_p = torch.log_softmax(softmax_precision(logits[b, :length]), dim=-1)
            targets = ids[b, 1:length].to(log_p.device)
            ce.append(float(-log_p[torch.arange(length - 1, device=log_p.device), targets].double().mean()))
            if original is not None:
                log_q = torch.log_softmax(softmax_precision(original[b, :length]), dim=-1)
                kl.append(float((log_q.exp() * (log_q - log_p)).double().sum() / length))
            elif with_kl:
                kl.append(0.0)
    return ce, (kl if with_kl else None)


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

    def per_document(self, shifted: ShiftedModel, options: set[str], progress: bool = True) -> dict[str, list[float]]:
        """{"ce": […], "kl": […]}: per sampled document, for the --metrics options asked; empty without documents."""
        wanted = {"ce", "kl"} & set(options)
        if not wanted:
            return {}
        if self.rows is None:
            return {name: [] for name in sorted(wanted)}
        with_kl = "kl" in wanted
        reference = None if shifted.active and not with_kl else self.reference(shifted.model, progress)
        ce, kl = ce_and_kl(shifted, self.rows, self.pad_id, self.batch_size, with_kl, progress, reference)
        return {"ce": ce, **({"kl": kl} if with_kl else {})}
