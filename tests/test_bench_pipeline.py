"""benchmarks/bench_pipeline.py on a tiny model: every stage runs both ways and the two ways agree.

The one-at-a-time way is legacy/ (plain hooks, no KV cache, one item per forward) and the fast
way is the package, so each agreement figure compares two independent code paths. No timing is
asserted: only that a ratio was measured and printed. The --memory probe, a process of its own, extracts
the same rows.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from transformers import AutoConfig

from benchmarks import bench_pipeline
from iti.geometry import head_geometry
from tests.conftest import tiny_model_folder

MODEL_STAGES = ("extraction", "probes", "mc", "generation", "judge", "ce_kl")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return tiny_model_folder(tmp_path_factory, "bench_model", "gqa", tokenizer, seed=3)


def test_every_stage_agrees_with_the_one_at_a_time_way(model_dir, tqa_path, tmp_path, capsys):
    output = tmp_path / "bench.json"
    bench_pipeline.main([
        "--model_path", str(model_dir), "--tqa_path", str(tqa_path), "--num_questions", "2",
        "--stages", ",".join(MODEL_STAGES), "--max_new_tokens", "5", "--ce_samples", "3",
        "--shift_heads", "2", "--batch_size", "4", "--output", str(output), "--memory", "--memory_limit", "2",
    ])
    printed = capsys.readouterr().out
    summary = printed.strip().splitlines()[-2]
    assert re.fullmatch(r"summary: " + " ".join(rf"{s}=[0-9.]+x" for s in MODEL_STAGES), summary), summary

    record = json.loads(output.read_text())
    assert record["config"]["num_questions"] == 2 and record["summary"] == summary
    results = record["results"]
    for stage in MODEL_STAGES:
        assert results[stage]["one_at_a_time_s"] > 0 and results[stage]["fast_s"] > 0

    extraction = results["extraction"]["agreement"]
    assert extraction["head_wise_max_abs_diff"] <= 1e-4 * max(extraction["head_wise_max_abs"], 1.0)
    assert extraction["layer_wise_max_abs_diff"] <= 1e-4 * max(extraction["layer_wise_max_abs"], 1.0)
    probes = results["probes"]["agreement"]
    assert probes["max_abs_acc_diff"] <= 1e-9
    mc = results["mc"]["agreement"]
    assert mc["max_abs_logprob_diff"] < 1e-3 and mc["max_abs_mc1_diff"] == 0
    assert mc["mean_mc2_fast"] == pytest.approx(mc["mean_mc2_one_at_a_time"], abs=1e-5)
    assert results["generation"]["agreement"]["identical_texts"] == "2/2"
    judge = results["judge"]["agreement"]
    decisions = judge["same_decision"].split("/")
    assert decisions[0] == decisions[1] and judge["max_abs_p_yes_diff"] < 1e-5
    ce_kl = results["ce_kl"]["agreement"]
    assert ce_kl["abs_ce_diff"] < 1e-4 * ce_kl["ce_one_at_a_time"]
    assert ce_kl["kl_one_at_a_time"] > 0 and ce_kl["abs_kl_diff"] < 1e-4 * ce_kl["kl_one_at_a_time"] + 1e-7
    # The memory probe's own process loaded the same model, extracted the same rows and wrote their float32
    # head-wise and layer-wise features (and labels, question ids, headers and the record besides).
    memory = results["memory"]
    assert memory["rows"] == extraction["rows"] and memory["model_bytes"] == record["config"]["model_bytes"]
    geo = head_geometry(AutoConfig.from_pretrained(model_dir))
    row_bytes = 4 * (geo.num_layers * geo.width + (geo.num_layers + 1) * geo.hidden_size)
    assert memory["output_bytes"] > memory["rows"] * row_bytes
    assert memory["peak_during_extraction"]["VmRSS"] >= memory["after_load"]["VmRSS"] > 0


def test_synthetic_7b_activations_plant_the_strongest_heads():
    """The planted heads are the ones a class-mean difference finds, measured here by hand."""
    acts, labels, separations = bench_pipeline.synthetic_activations(2000, 3, 8, 16, seed=0, strong=4, medium=0)
    assert acts.shape == (2000, 3, 8 * 16) and acts.dtype == np.float32 and set(np.unique(labels)) == {0, 1}
    planted = set(np.argsort(-separations.ravel())[:4])
    heads = acts.reshape(2000, 3 * 8, 16).astype(np.float64)
    gap = np.linalg.norm(heads[labels == 1].mean(0) - heads[labels == 0].mean(0), axis=1)
    spread = heads.std(0).mean(1)
    assert set(np.argsort(-(gap / spread))[:4]) == planted


def test_unknown_stage_is_a_usage_error():
    from iti.errors import UsageError

    with pytest.raises(UsageError, match="unknown stage"):
        bench_pipeline.main(["--stages", "extraction,warp_speed"])


def test_the_shifts_are_the_scripts_random_draw(model_dir, tqa_path):
    """The mc/generation/ce_kl stages shift the heads and directions --use_random_dir draws, with σ the spread of
    the extracted rows' projections (population std, by hand)."""
    from iti.directions import random_directions
    from iti.probes import random_heads

    options = bench_pipeline.BenchOptions(model_path=str(model_dir), tqa_path=str(tqa_path), num_questions=2,
                                          shift_heads=3, seed=7)
    bench = bench_pipeline.open_bench(options, {})
    bench.prepare_intervention()
    shifts = bench.intervention.shifts
    geo = head_geometry(bench.model.config)
    heads = random_heads(geo.num_layers, geo.num_heads, 3, 7)
    assert list(zip(shifts.layers.tolist(), shifts.heads.tolist())) == [tuple(map(int, h)) for h in heads]
    np.testing.assert_allclose(shifts.directions, random_directions(3, geo.head_dim, 7), rtol=1e-6)
    rows = bench.head_wise().astype(np.float64)
    d = geo.head_dim
    for (layer, head), direction, sigma in zip(heads, shifts.directions, shifts.sigmas):
        projections = rows[:, layer, head * d:(head + 1) * d] @ direction
        # The drawn directions are float32 and σ projects on them: agreement to float32 rounding.
        assert sigma == pytest.approx(np.sqrt(np.mean((projections - projections.mean()) ** 2)), rel=1e-6)
    assert shifts.alpha == options.alpha and shifts.provenance.method == "random"


def test_shifted_stages_need_two_questions():
    from iti.errors import UsageError

    with pytest.raises(UsageError, match="the mc stage"):
        bench_pipeline.main(["--stages", "mc", "--num_questions", "1"])


def test_the_grid_stages_agree_both_ways(model_dir, tqa_path, tmp_path, capsys):
    """sweep: a validate_2fold process per cell and one --sweep process write the same answer files; selection:
    a fit and an evaluation per setting and score_settings' one fit and one evaluate_settings give the same table."""
    output = tmp_path / "grid.json"
    bench_pipeline.main([
        "--model_path", str(model_dir), "--tqa_path", str(tqa_path), "--stages", "sweep,selection",
        "--grid_k", "1,2", "--grid_alpha", "0,4", "--sweep_questions", "6", "--num_questions", "4",
        "--selection_kl_samples", "2", "--batch_size", "4", "--output", str(output),
    ])
    summary = capsys.readouterr().out.strip().splitlines()[-2]
    assert re.fullmatch(r"summary: sweep=[0-9.]+x selection=[0-9.]+x", summary), summary

    results = json.loads(output.read_text())["results"]
    sweep = results["sweep"]["agreement"]
    # 4 cells × 2 folds, each fold file holding its half of the 6 questions.
    assert sweep["same_file_names"] and sweep["answer_files"] == 8 and sweep["questions_scored"] == 4 * 6
    # Float32 log-probabilities of a few tokens, from batches padded differently.
    assert sweep["max_abs_logprob_diff"] < 1e-3 and sweep["max_abs_mc1_diff"] == 0
    assert sweep["max_abs_mc2_diff"] < 1e-4 and sweep["max_abs_mc3_diff"] < 1e-4

    selection = results["selection"]
    agreement = selection["agreement"]
    assert agreement["settings"] == 4 and agreement["same_settings_in_order"]
    assert agreement["max_abs_mc1_diff"] == 0 and agreement["max_abs_mc2_diff"] < 1e-4
    assert agreement["max_abs_mc3_diff"] < 1e-4
    # KL of the shifted settings is measurably above 0 (so the comparison means something); α = 0 is exactly 0.
    kl = {(row["K"], row["alpha"]): row["KL"] for row in selection["table_one_at_a_time"]}
    assert kl[(1, 0.0)] == 0 and kl[(2, 4.0)] > 0
    assert agreement["max_abs_kl_diff"] < 1e-4 * kl[(2, 4.0)] + 1e-7


def test_a_bad_grid_is_a_usage_error():
    from iti.errors import UsageError

    with pytest.raises(UsageError, match="--grid_k"):
        bench_pipeline.main(["--stages", "sweep", "--grid_k", "4,eight"])


def test_the_lm_eval_stage_scores_as_validate_2fold(model_dir, tqa_path, tmp_path, capsys):
    """lm-eval's truthfulqa mc1/mc2 on validate_2fold's answers and validate_2fold's scorer give each question the same
    MC1 and, to float32 rounding of differently padded batches, the same MC2."""
    from iti.data import load_truthfulqa
    from iti.mc import mc_references

    pytest.importorskip("lm_eval")
    output = tmp_path / "lm_eval.json"
    bench_pipeline.main(["--model_path", str(model_dir), "--tqa_path", str(tqa_path), "--stages", "lm_eval",
                         "--lm_eval_questions", "3", "--batch_size", "4", "--output", str(output)])
    summary = capsys.readouterr().out.strip().splitlines()[-2]
    assert re.fullmatch(r"summary: lm_eval=[0-9.]+x", summary), summary
    result = json.loads(output.read_text())["results"]["lm_eval"]
    assert result["one_at_a_time_s"] > 0 and result["fast_s"] > 0
    agreement = result["agreement"]
    # One request per answer: MC1 the best answer and the false ones, MC2 the true ones and the false ones.
    refs = [mc_references(record) for record in load_truthfulqa(tqa_path).generation_in_mc_order()[:3]]
    assert agreement["questions"] == 3
    assert agreement["lm_eval_requests"] == sum(1 + len(ref.true) + 2 * len(ref.false) for ref in refs)
    assert agreement["max_abs_mc1_diff"] == 0 and agreement["max_abs_mc2_diff"] < 1e-4
