import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

from iti.errors import UsageError
from iti.geometry import head_geometry
from iti.models import HF_NAMES, load_model, model_sites, resolve_dtype, resolve_model_source
from tests.conftest import make_tiny_model


@pytest.mark.parametrize("config_class", [LlamaConfig, MistralConfig, Qwen2Config, Gemma2Config])
def test_sites_found_for_current_families(config_class):
    config = config_class(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    model = AutoModelForCausalLM.from_config(config)
    sites = model_sites(model)
    assert isinstance(model.get_submodule(f"{sites.layers}.1.{sites.o_proj}"), torch.nn.Linear)


def test_registry_knows_public_names_and_bundled_model():
    for name in ("llama_7B", "alpaca_7B", "vicuna_7B", "llama2_chat_7B", "llama2_chat_13B", "llama2_chat_70B",
                 "llama3_8B", "llama3_8B_instruct", "llama3_70B", "llama3_70B_instruct", "honest_llama2_chat_7B",
                 "mistral_7B_instruct", "qwen2.5_7B_instruct", "gemma2_9B_it", "llama3.1_8B_instruct"):
        assert name in HF_NAMES
    assert resolve_model_source("llama2_chat_7B") == "meta-llama/Llama-2-7b-chat-hf"
    assert resolve_model_source("smollm2_135M_instruct").endswith(".gguf")


def test_unknown_name_lists_known_ones():
    with pytest.raises(UsageError, match="known names: .*llama_7B"):
        resolve_model_source("llama_8B")


def test_model_path_overrides_and_missing_path_errors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source("anything", model_path=str(tmp_path)) == str(tmp_path)
    assert resolve_model_source("x", model_path="org/model") == "org/model"
    with pytest.raises(UsageError, match="does not exist"):
        resolve_model_source("x", model_path=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="does not exist"):
        resolve_model_source("x", model_path="missing.gguf")


def test_local_prefix_finds_the_named_bake_and_lists_the_others(tmp_path, monkeypatch):
    import iti.models as models

    monkeypatch.setattr(models, "EDITED_MODELS_DIR", tmp_path)
    with pytest.raises(UsageError, match="edit_weight.py --model_name llama_7B"):
        resolve_model_source("llama_7B", model_prefix="local_")
    made = tmp_path / "llama_7B_seed_1_top_16_heads_alpha_2.5_limit_8_0123abcd"
    made.mkdir()
    # With no bake named (get_activations, or validate_2fold with --num_heads 0), the only one there is.
    assert resolve_model_source("llama_7B", "local_") == str(made)
    assert resolve_model_source("llama_7B", "local_", bake=(42, 0, 15.0)) == str(made)
    assert resolve_model_source("llama_7B", "local_", bake=(1, 16, 2.5)) == str(made)
    (tmp_path / "llama_7B_seed_42_top_48_heads_alpha_15_89abcdef").mkdir()
    (tmp_path / "llama_7B_seed_42_top_48_heads_alpha_1_fedcba98").mkdir()
    assert resolve_model_source("llama_7B", "local_", bake=(42, 48, 15.0)).endswith("alpha_15_89abcdef")
    with pytest.raises(UsageError, match=r"seed 3, K 16, alpha 2.5 .* llama_7B_seed_1_top_16_heads_alpha_2.5_limit_8_"
                                         r"0123abcd, llama_7B_seed_42_top_48_heads_alpha_15_89abcdef, "
                                         r"llama_7B_seed_42_top_48_heads_alpha_1_fedcba98; pass the --seed"):
        resolve_model_source("llama_7B", "local_", bake=(3, 16, 2.5))
    with pytest.raises(UsageError, match="3 edited models .* could be a bake: "):
        resolve_model_source("llama_7B", "local_")


def test_local_prefix_with_several_bakes_of_the_settings_asks_for_the_folder(tmp_path, monkeypatch):
    import iti.models as models

    monkeypatch.setattr(models, "EDITED_MODELS_DIR", tmp_path)
    for name in ("llama_7B_seed_42_top_48_heads_alpha_15_0123abcd", "llama_7B_seed_42_top_48_heads_alpha_15_89abcdef"):
        (tmp_path / name).mkdir()
    with pytest.raises(UsageError, match=r"2 edited models in .* could be the bake with seed 42, K 48, alpha 15 "
                                         r".*alpha_15_0123abcd, .*alpha_15_89abcdef; pass the one to use with "
                                         r"--model_path"):
        resolve_model_source("llama_7B", "local_", bake=(42, 48, 15.0))


def test_dtype_auto():
    config = LlamaConfig(dtype="bfloat16")
    assert resolve_dtype("auto", "cpu", config) == torch.float32
    assert resolve_dtype("auto", "cuda", config) == torch.bfloat16
    assert resolve_dtype("auto", "cuda", LlamaConfig(dtype="float32")) == torch.float16
    with pytest.raises(UsageError):
        resolve_dtype("int8", "cpu", config)


@pytest.mark.slow
def test_gguf_converts_to_a_plain_reloadable_folder(bundled_folder):
    assert (bundled_folder / "model.safetensors").exists() and (bundled_folder / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(bundled_folder)
    assert getattr(model.config, "quantization_config", None) is None
    geo = head_geometry(model.config)
    assert (geo.num_layers, geo.num_heads, geo.num_kv_heads, geo.head_dim) == (30, 9, 3, 64)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>not a model</html>")
    with pytest.raises(UsageError, match=r"model.gguf is a file but not a GGUF model"):
        resolve_model_source("x", model_path=str(fake))
    with pytest.raises(UsageError, match=r"not a GGUF model"):
        load_model(str(fake), device="cpu")


def without_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)


def cut_in_half(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def only_the_config(folder):
    for path in folder.iterdir():
        if path.name != "config.json":
            path.unlink()


@pytest.mark.parametrize("damage, phrase", [
    (lambda folder: [p.unlink() for p in folder.iterdir()], "cannot load the config of model {folder}: Unrecognized"),
    (only_the_config, "cannot load the tokenizer of model {folder}: the folder holds none of tokenizer.json"),
    (without_tokenizer, "cannot load the tokenizer of model {folder}: the folder holds none of tokenizer.json"),
    (lambda folder: cut_in_half(folder / "model.safetensors"), "{folder}/model.safetensors is truncated or corrupt"),
    (lambda folder: (folder / "model.safetensors").unlink(),
     "cannot load the weights of model {folder}: Error no file named model.safetensors"),
], ids=["empty", "config_alone", "no_tokenizer", "truncated_weights", "no_weights"])
def test_a_folder_that_is_no_whole_model_is_one_line_naming_it(damage, phrase, tmp_path, tokenizer):
    folder = tmp_path / "model"
    make_tiny_model("llama", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    damage(folder)
    with pytest.raises(UsageError) as refused:
        load_model(str(folder), device="cpu")
    assert phrase.format(folder=folder) in str(refused.value) and "\n" not in str(refused.value)
