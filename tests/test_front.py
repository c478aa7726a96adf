"""The front of a selection table (ITI_SPEC §11), by hand and against a second algorithm, and the trade-off figure
of a selection run's folds and of collect_sweep's cells."""
import math
import runpy
import sys

import numpy as np
import pandas as pd
import pytest

from iti import plots
from iti.front import front_flags, with_front
from iti.runs import read_run
from tests.conftest import REPO_ROOT
from tests.test_validate_cli import MODEL, config, setup  # noqa: F401 (a fixture)

COLLECT = REPO_ROOT / "validation" / "sweeping" / "collect_sweep.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rows(metric: str, points) -> list[dict]:
    return [{"K": 8, "alpha": float(i), metric: score, "KL": kl} for i, (score, kl) in enumerate(points)]


def test_front_by_hand_with_ties_and_unmeasured_rows():
    table = rows("MC2", [
        (0.50, 0.0),       # the cheapest: on the front
        (0.56, 0.2),       # on
        (0.56, 0.3),       # off: the same score for less KL above
        (0.61, 0.9),       # on
        (0.59, 1.4),       # off: a better score for less KL
        (0.61, 0.9),       # the same score and KL as the fourth: on with it
        (0.55, 0.2),       # off: a better score at the same KL
        (math.nan, 0.1),   # not measured: no flag
        (0.70, None),      # no KL: no flag, and it beats no one
    ])
    assert front_flags(table, "MC2") == [True, True, False, True, False, True, False, None, None]
    assert [row["front"] for row in with_front(table, "MC2")] == front_flags(table, "MC2")


def test_a_lower_is_better_metric_turns_the_front_around():
    points = [(2.0, 0.0), (1.8, 0.3), (1.9, 0.5), (1.8, 0.4), (1.5, 1.0)]
    assert front_flags(rows("CE", points), "CE") == [True, True, False, False, True]
    # Read as a higher-is-better score, the same numbers put only the cheapest on the front.
    assert front_flags(rows("MC2", points), "MC2") == [True, False, False, False, False]


def sweep_front(scores: np.ndarray, kls: np.ndarray) -> list[bool]:
    """The front by another route: a setting is on it when it beats every setting of strictly smaller KL and
    equals the best of its own KL."""
    flags = []
    for score, kl in zip(scores, kls):
        cheaper, same = scores[kls < kl], scores[kls == kl]
        flags.append(bool((cheaper.size == 0 or score > cheaper.max()) and score >= same.max()))
    return flags


def test_front_equals_a_sweep_over_kl_on_random_tables_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = int(rng.integers(1, 12))
        scores, kls = rng.integers(0, 5, size).astype(float), rng.integers(0, 5, size).astype(float)
        assert front_flags(rows("MC2", zip(scores, kls)), "MC2") == sweep_front(scores, kls)
        assert front_flags(rows("CE", zip(scores, kls)), "CE") == sweep_front(-scores, kls)


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures plots.save_figure writes (still written), in order."""
    figures = []
    real = plots.save_figure

    def recording(fig, path):
        figures.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", recording)
    return figures


def artist(ax, gid: str):
    found = [c for c in ax.collections if c.get_gid() == gid]
    return found[0] if found else None


def line(ax, label: str):
    found = [item for item in ax.lines if item.get_label() == label]
    return found[0] if found else None


def test_tradeoff_figure_draws_every_setting_the_fronts_and_the_choices(tmp_path, saved_figures):
    iti = [rows("MC2", [(0.50, 0.0), (0.56, 0.2), (0.55, 0.4), (0.61, 0.9), (0.70, None)]),
           rows("MC2", [(0.48, 0.0), (0.52, 0.3), (0.60, 1.1)])]
    control = rows("MC2", [(0.50, 0.0), (0.53, 0.5), (0.51, 0.8)])
    folds = [{"fold": 0, "iti": iti[0], "control": control, "chosen": iti[0][1], "control_chosen": control[1]},
             {"fold": 1, "iti": iti[1], "control": None, "chosen": iti[1][2], "control_chosen": None}]
    path = plots.tradeoff_figure(tmp_path / "run_tradeoff.png", "MC2", folds, max_kl=1.0)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    first, second = saved_figures[0].axes[:2]
    # Every setting with a KL is a point: four of fold 0's five (one has none), all three of fold 1's.
    assert len(artist(first, "iti settings").get_offsets()) == 4
    assert len(artist(first, "control settings").get_offsets()) == 3
    assert len(artist(second, "iti settings").get_offsets()) == 3 and artist(second, "control settings") is None
    np.testing.assert_allclose(artist(first, "iti choice").get_offsets(), [[0.2, 0.56]])
    np.testing.assert_allclose(artist(first, "control choice").get_offsets(), [[0.5, 0.53]])
    # The fronts, by KL: (0.55, 0.4) is beaten by (0.56, 0.2); the control's (0.51, 0.8) by (0.53, 0.5).
    np.testing.assert_allclose(np.column_stack(line(first, "ITI front").get_data()),
                               [[0.0, 0.50], [0.2, 0.56], [0.9, 0.61]])
    np.testing.assert_allclose(np.column_stack(line(first, "control front").get_data()), [[0.0, 0.50], [0.5, 0.53]])
    assert line(first, "ITI front").get_drawstyle() == "steps-post"
    assert first.get_title() == "fold 0" and first.get_ylabel() == "MC2 (higher is better)"


@pytest.fixture(scope="module")
def kl_sweep(setup, tmp_path_factory):
    """Runs of a tiny model on 6 questions with MC2 and KL: the baseline, two settings, and one run that chose among
    a grid (not a point of the sweep's figure)."""
    from iti.validate import run_validation

    results = tmp_path_factory.mktemp("kl_sweep")
    records = [run_validation(config(setup, results, num_heads=k, alpha=alpha, metrics=("mc", "kl"),
                                     owt_path=str(setup["owt"]), val_ratio=0.5, select_ratio=0.34),
                              progress=False, log=lambda _: None)
               for k, alpha in ((0, 0.0), (2, 4.0), (2, 40.0), ((2, 3), (4.0, 40.0)))]
    return results, records


def test_collect_sweep_draws_each_run_of_one_setting(kl_sweep, saved_figures, monkeypatch, capsys):
    root, records = kl_sweep
    monkeypatch.setattr(sys, "argv", [str(COLLECT), "--model_name", MODEL, "--model_path", "hub/tiny",
                                      "--use_center_of_mass", "--limit", "6", "--results_dir", str(root),
                                      "--metrics", "mc", "kl"])
    runpy.run_path(str(COLLECT), run_name="__main__")
    out = capsys.readouterr().out
    written = next(text for text in out.splitlines() if text.startswith("trade-off of MC2 against KL -> "))
    path = written.split(" -> ")[1]
    assert path.endswith("_tradeoff.png") and open(path, "rb").read().startswith(PNG_SIGNATURE)
    figure = saved_figures[-1]
    single = records[:3]
    points = artist(figure.axes[0], "iti settings").get_offsets()
    expected = [[r["final"]["KL"], r["final"]["MC2"]] for r in single]
    np.testing.assert_allclose(sorted(map(list, points)), sorted(expected))
    assert artist(figure.axes[0], "iti choice") is None  # a sweep chooses nothing
    front = np.column_stack(line(figure.axes[0], "ITI front").get_data())
    flags = front_flags([{"MC2": r["final"]["MC2"], "KL": r["final"]["KL"]} for r in single], "MC2")
    np.testing.assert_allclose(front, sorted(e for e, on in zip(expected, flags) if on))
    table = pd.read_csv(next((root / "results_dump" / "sweep_dump").glob("*[0-9a-f].csv")))
    assert len(table) == 4  # the grid's run is a row of the table, not a point of the figure


def test_selection_run_writes_its_figure_and_says_its_budget(kl_sweep):
    root, records = kl_sweep
    grid = records[3]
    assert grid["tradeoff_figure"].endswith("_tradeoff.png")
    assert grid["tradeoff_figure"][:-len("_tradeoff.png")] == grid["json_path"][:-len(".json")]
    assert open(grid["tradeoff_figure"], "rb").read().startswith(PNG_SIGNATURE)
    assert all(record["tradeoff_figure"] is None for record in records[:3])
    assert read_run(grid["json_path"]).tradeoff_figure == grid["tradeoff_figure"]  # the record reads back
    for fold in grid["folds"]:
        table = fold["selection"]["table"]
        assert fold["selection"]["max_kl"] is None
        assert [row["front"] for row in table] == front_flags(table, "MC2")
        assert all(row["KL"] is not None and row["CE"] is not None for row in table)  # the same pass gives CE
