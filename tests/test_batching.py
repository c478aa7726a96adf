"""The one pad-id rule and padding on either side, against hand-built tensors."""
from types import SimpleNamespace

import pytest
import torch

from iti.batching import length_sorted_batches, pad_batch, pad_token_id


@pytest.mark.parametrize("pad, eos, expected", [(7, 2, 7), (None, 2, 2), (None, None, 0), (0, 5, 0)])
def test_pad_id_rule(pad, eos, expected):
    assert pad_token_id(SimpleNamespace(pad_token_id=pad, eos_token_id=eos)) == expected


def test_right_and_left_padding():
    rows = [[5, 6, 7], [8], [9, 10]]
    ids, mask = pad_batch(rows, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    ids, mask = pad_batch(rows, pad_id=1, side="left")
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8], [1, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="side"):
        pad_batch(rows, 0, side="middle")


def test_batches_longest_first_and_stable():
    batches = length_sorted_batches([2, 5, 5, 1, 3], batch_size=2)
    assert [b.tolist() for b in batches] == [[1, 2], [4, 0], [3]]


def test_padded_row_equals_row_alone(tiny):
    """Right padding: a row's logits at its real positions equal those of the row run alone."""
    model, tokenizer = tiny
    rows = [tokenizer(t)["input_ids"] for t in ("A longer sentence with several words.", "Short.")]
    ids, mask = pad_batch(rows, pad_token_id(tokenizer))
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=torch.tensor([rows[1]])).logits
    torch.testing.assert_close(batched[1, :len(rows[1])], alone[0], rtol=1e-4, atol=1e-4)
