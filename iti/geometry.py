"""A model's head geometry, the one type for it: read from the model's config here, and derived from the records
that hold it on disk (a feature set's `_meta.json`, `head_shifts.json`), which keep their flat keys. Standard
library only: features and head shifts are checked without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from iti.errors import UsageError


def text_config(config):
    """The language model's part of a config: a multimodal model nests it, a text model is its own."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass(frozen=True)
class HeadGeometry:
    """L layers of H attention heads, each head_dim wide. The residual width and the key/value heads are known
    where a model's config is (not to head shifts), so two geometries compare by L, H and head_dim alone."""
    num_layers: int
    num_heads: int
    head_dim: int
    num_kv_heads: int | None = field(default=None, compare=False)
    hidden_size: int | None = field(default=None, compare=False)

    @property
    def width(self) -> int:
        """Size of the o_proj input: all heads side by side."""
        return self.num_heads * self.head_dim

    def __str__(self) -> str:
        return f"{self.num_layers}×{self.num_heads}×{self.head_dim}"

    def check_num_heads(self, num_heads: int, what: str = "--num_heads") -> None:
        """--num_heads picks at most every head of the model."""
        total = self.num_layers * self.num_heads
        if num_heads > total:
            raise UsageError(f"{what} {num_heads} exceeds the model's {self.num_layers} layers x "
                             f"{self.num_heads} heads = {total}; pick at most {total}")


def head_geometry(config) -> HeadGeometry:
    text = text_config(config)
    num_heads = text.num_attention_heads
    # Per head, the o_proj input holds its value vector: v_head_dim wide in multi-head latent attention (DeepSeek).
    head_dim = getattr(text, "v_head_dim", None) or getattr(text, "head_dim", None) or text.hidden_size // num_heads
    return HeadGeometry(num_layers=text.num_hidden_layers, num_heads=num_heads, head_dim=head_dim,
                        num_kv_heads=getattr(text, "num_key_value_heads", None) or num_heads,
                        hidden_size=text.hidden_size)
