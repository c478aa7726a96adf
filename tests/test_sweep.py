"""collect_sweep: the table holds each completed run's final means, and the plot skips empty metrics."""
import json
import runpy
import sys

import pandas as pd
import pytest

from iti.validate import ValidationConfig, run_validation
from tests.conftest import REPO_ROOT, make_tiny_model

SCRIPT = REPO_ROOT / "validation" / "sweeping" / "collect_sweep.py"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tokenizer, tqa_path):
    from iti.activations import save_features
    from iti.data import build_prompt_set

    root = tmp_path_factory.mktemp("sweep")
    model = make_tiny_model("gqa", len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        save_features(model, tokenizer, build_prompt_set(dataset, tqa_path, limit=4), root / "features", "tq",
                      progress=False)
    records = []
    for alpha, k in ((0.0, 0), (4.0, 2), (8.0, 2)):
        cfg = ValidationConfig(model_name="tq", model_path=str(root / "model"), features_dir=str(root / "features"),
                               results_dir=str(root / "results"), tqa_path=str(tqa_path), limit=4, num_heads=k,
                               alpha=alpha, use_center_of_mass=True, metrics=("mc",), device="cpu")
        records.append(run_validation(cfg, progress=False, log=lambda _: None))
    # An interrupted run (complete: false) must not enter the table.
    partial = json.loads(open(records[-1]["json_path"]).read())
    partial.update(complete=False, config={**partial["config"], "alpha": 12.0})
    (root / "results" / "results_dump" / "summary_dump" / "partial.json").write_text(json.dumps(partial))
    return root, records


def test_table_and_plot(sweep, monkeypatch, capsys):
    root, records = sweep
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model_name", "tq", "--use_center_of_mass", "--limit", "4",
                                      "--results_dir", str(root / "results"), "--metrics", "mc"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out_dir = root / "results" / "results_dump" / "sweep_dump"
    table = pd.read_csv(out_dir / "tq_center_of_mass_limit_4.csv")
    assert table[["K", "alpha"]].values.tolist() == [[0, 0.0], [2, 4.0], [2, 8.0]]
    for (_, row), record in zip(table.iterrows(), records):
        assert row["MC2"] == pytest.approx(record["final"]["MC2"])
        assert row["MC1"] == pytest.approx(record["final"]["MC1"])
    assert table["CE"].isna().all() and table["True*Info"].isna().all()
    assert (out_dir / "tq_center_of_mass_limit_4.png").stat().st_size > 0
    markdown = (out_dir / "tq_center_of_mass_limit_4.md").read_text()
    assert markdown.count("\n") == 2 + len(table)
    assert "(MC2)" in capsys.readouterr().out  # only MC2 has values to plot


def test_no_runs_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model_name", "nothing", "--results_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert stop.value.code == 2 and "no completed runs of nothing" in capsys.readouterr().err
