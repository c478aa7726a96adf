"""Bake ITI head shifts into a model's weights and save it as an ordinary model folder.

Probes every head on all questions of --dataset_name (a seeded train/validation split, no test
fold), picks the --num_heads best heads, takes their directions and spreads σ (the latter from
--activations_dataset), then sets each edited layer's o_proj bias to W_o·δ_l (docs/method.md §7;
the public script stored δ_l itself, wrong whenever W_o ≠ I). The folder loads with a plain
AutoModelForCausalLM.from_pretrained and holds the head shifts too (head_shifts.*), and last bake.json:
every file written, with its SHA-256, and the command that remakes them (loading and push_hf.py check
them). Its space is checked before writing; one bake writes a folder at a time. Qwen2 and Mistral,
whose configs have no o_proj bias switch, are saved as Llama checkpoints (the same function); the
last line printed says which architecture was saved and why.

python get_activations/get_activations.py --model_name llama2_chat_7B --dataset_name tqa_mc2
python get_activations/get_activations.py --model_name llama2_chat_7B --dataset_name tqa_gen_end_q
python validation/edit_weight.py --model_name llama2_chat_7B --num_heads 48 --alpha 15 --use_center_of_mass
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import EditConfig  # noqa: E402


def main() -> None:
    cfg = parse_config(EditConfig, description=__doc__)
    from iti.bake import bake_model

    bake = bake_model(cfg)
    print(f"baked {bake.shifts.k} heads ({cfg.method} directions, alpha {cfg.alpha:g}) into the o_proj biases of "
          f"{len(set(bake.shifts.layers.tolist()))} layers -> {bake.folder}")
    print(bake.plan.describe())


if __name__ == "__main__":
    run_main(main)
