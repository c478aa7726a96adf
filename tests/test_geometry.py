"""iti.geometry: a model's head geometry read from its config (head_dim as the config states it, else hidden size
over heads), the language part of a multimodal config, and geometries compared by layers, heads and head_dim."""
import pytest
from transformers import Gemma2Config, LlamaConfig, LlavaConfig

from iti.errors import UsageError
from iti.geometry import HeadGeometry, head_geometry, text_config


def test_geometry_reads_head_dim_from_config():
    geo = head_geometry(LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                    num_hidden_layers=5))
    assert (geo.num_layers, geo.num_heads, geo.head_dim, geo.num_kv_heads, geo.width) == (5, 4, 24, 2, 96)
    gemma = head_geometry(Gemma2Config(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                                       num_hidden_layers=2))
    assert gemma.width == 256 != gemma.hidden_size
    plain = head_geometry(LlamaConfig(hidden_size=48, num_attention_heads=6, num_hidden_layers=2))
    assert (plain.head_dim, plain.num_kv_heads) == (48 // 6, 6)


def test_a_multimodal_config_gives_its_language_models_geometry():
    text = LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=3)
    config = LlavaConfig(text_config=text.to_dict())
    assert text_config(config).num_hidden_layers == 3 and text_config(text) is text
    assert head_geometry(config) == HeadGeometry(3, 4, 8)


def test_geometries_compare_by_layers_heads_and_head_dim():
    model = HeadGeometry(4, 3, 8, num_kv_heads=1, hidden_size=24)
    assert model == HeadGeometry(4, 3, 8) and str(model) == "4×3×8"
    assert model != HeadGeometry(4, 3, 16) and model != HeadGeometry(5, 3, 8)


def test_num_heads_may_pick_every_head_and_no_more():
    geometry = HeadGeometry(3, 4, 8)
    geometry.check_num_heads(12)
    with pytest.raises(UsageError, match=r"--num_heads 13 exceeds the model's 3 layers x 4 heads = 12; pick at most 12"):
        geometry.check_num_heads(13)
