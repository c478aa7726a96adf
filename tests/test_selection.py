"""Choosing (K, α): the table rule, the three-way split, and scores from questions the shifts never saw."""
import math

import numpy as np
import pytest

from iti.errors import UsageError
from iti.fitting import Features, Recipe, Split, fit_head_shifts
from iti.selection import budget_text, choose_setting, edge_note, score_settings, selection_split, table_line

TABLE = [
    {"K": 8, "alpha": 0.0, "MC2": 0.50, "KL": 0.0},
    {"K": 8, "alpha": 5.0, "MC2": 0.56, "KL": 0.2},
    {"K": 16, "alpha": 5.0, "MC2": 0.56, "KL": 0.3},
    {"K": 8, "alpha": 15.0, "MC2": 0.61, "KL": 0.9},
    {"K": 16, "alpha": 15.0, "MC2": 0.59, "KL": 1.4},
]


def test_best_score_wins():
    assert choose_setting(TABLE, "MC2") == (TABLE[3], None)


def test_a_kl_budget_excludes_and_ties_go_to_the_weaker_shift():
    # Within KL 0.5, K 8 and K 16 at α 5 tie on MC2: the smaller K is taken.
    assert choose_setting(TABLE, "MC2", max_kl=0.5) == (TABLE[1], None)
    tied_alphas = [dict(TABLE[1], alpha=10.0), TABLE[1]]
    assert choose_setting(tied_alphas, "MC2")[0] is TABLE[1]


def test_no_setting_within_the_budget_takes_the_smallest_kl_and_says_so():
    chosen, note = choose_setting(TABLE[1:], "MC2", max_kl=0.1)
    assert chosen is TABLE[1] and "no setting kept KL within --max_kl 0.1" in note


def test_missing_metric_and_empty_table_are_usage_errors():
    with pytest.raises(UsageError, match="--select_metric True\\*Info has no value"):
        choose_setting([dict(row, **{"True*Info": math.nan}) for row in TABLE], "True*Info")
    with pytest.raises(UsageError):
        choose_setting([], "MC2")


def test_edge_notes_name_the_side_of_the_grid():
    settings = [(k, a) for k in (8, 16) for a in (0.0, 5.0, 15.0)]
    assert "K 16 is the largest tried" in edge_note({"K": 16, "alpha": 5.0}, settings)
    assert "alpha 15 is the largest tried" in edge_note({"K": 8, "alpha": 15.0}, settings)
    assert "K 8 is the smallest tried" in edge_note({"K": 8, "alpha": 5.0}, settings)
    assert edge_note({"K": 8, "alpha": 0.0}, [(8, 0.0), (8, 5.0), (8, 15.0)]) is None
    assert edge_note({"K": 8, "alpha": 5.0}, [(8, 0.0), (8, 5.0), (8, 15.0)]) is None


def test_the_log_line_shows_the_price_and_the_front_or_a_dash_where_unmeasured():
    measured = dict(TABLE[1], CE=2.5, front=True)
    assert table_line(measured, "MC2") == "selection: K 8, alpha 5: MC2 0.5600, KL 0.2000, CE 2.5000 (front)"
    unmeasured = dict(TABLE[1], KL=math.nan, CE=math.nan, front=None)
    assert table_line(unmeasured, "MC2") == "selection: K 8, alpha 5: MC2 0.5600, KL —, CE —"
    assert budget_text(0.5) == "under KL <= 0.5 (--max_kl)" and budget_text(None) == "with no KL budget (no --max_kl)"


NUM_LAYERS, NUM_HEADS, HEAD_DIM = 2, 4, 6
FOLD = Split(np.arange(0, 160), np.arange(160, 200), np.arange(200, 300), fold=0)


def test_the_three_way_split_keeps_the_parts_apart():
    inner, selecting = selection_split(FOLD, 0.2, 0.2, seed=42)
    development = np.r_[FOLD.train, FOLD.val]
    parts = [inner.train, inner.val, selecting]
    assert sum(len(p) for p in parts) == len(development) and len(selecting) == 40
    assert sorted(np.concatenate(parts)) == sorted(development)
    assert not set(inner.train) & set(inner.val)
    assert len(inner.train) == int(160 * 0.8)
    again, selecting_again = selection_split(FOLD, 0.2, 0.2, seed=42)
    np.testing.assert_array_equal(selecting, selecting_again)
    np.testing.assert_array_equal(inner.train, again.train)
    with pytest.raises(UsageError, match="--select_ratio"):
        selection_split(Split(np.arange(2), np.arange(2, 3)), 0.1, 0.2, seed=0)


def synthetic_features(honest_questions, misleading_questions, seed: int = 0) -> Features:
    """Two rows (true, false) per question. Head (0, 0) tells the labels apart on every question, clearly;
    heads (1, 0..3), less clearly, on `honest_questions`, and the reverse way on `misleading_questions`."""
    rng = np.random.default_rng(seed)
    questions = 300
    ids = np.repeat(np.arange(questions), 2)
    labels = np.tile([1, 0], questions)
    acts = rng.standard_normal((len(ids), NUM_LAYERS, NUM_HEADS * HEAD_DIM)).astype(np.float32) * 0.5
    signal = np.where(labels == 1, 1.0, -1.0)
    acts[:, 0, :HEAD_DIM] += (3.0 * signal)[:, None]
    sign = np.zeros(questions)
    sign[honest_questions] = 1.0
    sign[misleading_questions] = -1.0
    acts[:, 1, ::HEAD_DIM] += (0.6 * signal * sign[ids])[:, None]
    return Features(acts, labels, ids, acts, ids, NUM_HEADS)


def each(score):
    """score_settings' scorer (every setting's shifts in one call) from a scorer of one setting's shifts."""
    return lambda settings: [score(shifts) for shifts in settings]


def separation(features: Features, questions: np.ndarray):
    """score(shifts): Σ over the shifted heads of direction · (mean true row − mean false row) on `questions`'
    rows: how far the shifts move these questions' activations toward their true answers."""
    rows = np.flatnonzero(np.isin(features.question_ids, questions))

    def score(shifts):
        if shifts is None:
            return {"MC2": 0.0, "KL": 0.0}
        total = 0.0
        for (layer, head), direction in zip(shifts.head_list(), shifts.directions):
            block = features.acts[rows, layer, head * HEAD_DIM:(head + 1) * HEAD_DIM].astype(np.float64)
            labels = features.labels[rows]
            total += direction @ (block[labels == 1].mean(0) - block[labels == 0].mean(0))
        return {"MC2": float(total), "KL": 0.0}
    return score


def test_honest_selection_picks_what_does_better_on_fresh_questions():
    """Shifts fitted on the development questions, heads (1, ·) misleading on the set-aside and test
    questions: scored on the questions that built them (the old, optimistic way) K 5 looks best; scored on
    set-aside questions (the honest way) K 1 wins, as it does on the fresh test questions."""
    inner, selecting = selection_split(FOLD, 0.2, 0.2, seed=42)
    features = synthetic_features(np.r_[inner.train, inner.val], np.r_[selecting, FOLD.test])
    settings = [(1, 1.0), (5, 1.0)]
    recipe = Recipe(1, 1.0, "center_of_mass")
    optimistic = score_settings(features, FOLD, settings, recipe, each(separation(features, FOLD.val)))
    honest = score_settings(features, inner, settings, recipe, each(separation(features, selecting)))
    fresh = score_settings(features, FOLD, settings, recipe, each(separation(features, FOLD.test)))
    assert choose_setting(optimistic, "MC2")[0]["K"] == 5
    assert choose_setting(honest, "MC2")[0]["K"] == 1
    assert fresh[0]["MC2"] > fresh[1]["MC2"]


@pytest.mark.parametrize("method", ["center_of_mass", "probe"])
def test_no_set_aside_row_enters_the_shifts_scored(method):
    """Poison every row of the set-aside questions (activations, labels and, with σ from the development
    questions, tuning rows): the shifts handed to the scorer do not change."""
    inner, selecting = selection_split(Split(FOLD.train, FOLD.val, sigma=np.r_[FOLD.train, FOLD.val], fold=0),
                                       0.2, 0.2, seed=7)
    clean = synthetic_features(np.arange(300), np.array([], dtype=np.int64))
    poisoned_rows = np.isin(clean.question_ids, selecting)
    acts = clean.acts.copy()
    acts[poisoned_rows] = 1e3 * np.random.default_rng(1).standard_normal(acts[poisoned_rows].shape)
    labels = clean.labels.copy()
    labels[poisoned_rows] = 1 - labels[poisoned_rows]
    poisoned = Features(acts, labels, clean.question_ids, acts, clean.question_ids, NUM_HEADS)
    seen = {}

    def recorder(name):
        def score(shifts):
            seen.setdefault(name, []).append(shifts)
            return {"MC2": 0.0, "KL": 0.0}
        return each(score)

    settings = [(2, 1.0), (2, 5.0), (6, 1.0)]
    for name, features in (("clean", clean), ("poisoned", poisoned)):
        score_settings(features, inner, settings, Recipe(1, 1.0, method), recorder(name))
    for a, b in zip(seen["clean"], seen["poisoned"]):
        assert a.head_list() == b.head_list() and a.alpha == b.alpha
        np.testing.assert_array_equal(a.directions, b.directions)
        np.testing.assert_array_equal(a.sigmas, b.sigmas)
    # The same poison in a question that builds the shifts changes them: the check can fail.
    built = np.isin(clean.question_ids, inner.train[:20])
    acts = clean.acts.copy()
    acts[built] = 1e3
    touched = Features(acts, clean.labels, clean.question_ids, acts, clean.question_ids, NUM_HEADS)
    score_settings(touched, inner, settings, Recipe(1, 1.0, method), recorder("touched"))
    assert any(not np.array_equal(a.directions, b.directions) or a.head_list() != b.head_list()
               for a, b in zip(seen["clean"], seen["touched"]))


def test_every_setting_is_scored_in_one_call_as_a_run_of_that_setting_builds_it():
    """The scorer gets all settings at once (so they can share a batch): None for the unshifted ones, and for the
    others the shifts fit_head_shifts builds for that (K, α) alone, bit for bit."""
    inner, _ = selection_split(FOLD, 0.2, 0.2, seed=42)
    features = synthetic_features(np.arange(300), np.array([], dtype=np.int64))
    settings = [(2, 0.0), (2, 5.0), (6, 1.0), (0, 5.0), (2, 1.0)]
    calls = []

    def score(shifts_of_settings):
        calls.append(shifts_of_settings)
        return [{"MC2": float(i), "KL": 0.0} for i in range(len(shifts_of_settings))]

    table = score_settings(features, inner, settings, Recipe(1, 1.0, "center_of_mass"), score)
    assert len(calls) == 1 and [(row["K"], row["alpha"], row["MC2"]) for row in table] == \
        [(k, a, float(i)) for i, (k, a) in enumerate(settings)]
    for (k, alpha), shifts in zip(settings, calls[0]):
        if k == 0 or alpha == 0:
            assert shifts is None
            continue
        alone = fit_head_shifts(features, inner, Recipe(k, alpha, "center_of_mass"))[0]
        assert shifts.head_list() == alone.head_list() and shifts.alpha == alone.alpha
        np.testing.assert_array_equal(shifts.directions, alone.directions)
        np.testing.assert_array_equal(shifts.sigmas, alone.sigmas)


# ----------------------------------------------------------------------------- the price of every setting, end to end

from tests.test_validate_cli import SELECTION, config, selection_features, setup  # noqa: E402, F401 (fixtures)


def test_every_setting_s_kl_is_that_setting_s_kl_alone_and_the_log_shows_the_front(setup, selection_features,
                                                                                     tmp_path, monkeypatch):
    """A selection run with CE and KL: each row's KL (scored in one call with the others) equals the KL of its
    shifts evaluated alone, as a run of that one setting evaluates them, and the plain-hook reference's (legacy,
    one document per forward); the fold lines show each row's price and front mark, and the final lines the
    budget that chose."""
    from iti.evaluation import Evaluator
    from iti.front import front_flags
    from iti.validate import run_validation
    from legacy.ce_kl import ce_kl as reference_ce_kl

    scored = []
    real = Evaluator.evaluate_settings

    def recording(self, settings, records, *args, **kwargs):
        if len(settings) > 1:  # a fold's selection: the one call that scores every setting
            scored.append((self, settings))
        return real(self, settings, records, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate_settings", recording)
    lines = []
    budget = 0.15
    record = run_validation(config(setup, tmp_path, features_dir=str(selection_features), metrics=("mc", "ce", "kl"),
                                   owt_path=str(setup["owt"]), max_kl=budget, **SELECTION),
                            progress=False, log=lines.append)
    monkeypatch.setattr(Evaluator, "evaluate_settings", real)
    assert len(scored) == len(record["folds"])
    # Logits of float32 forwards batched and padded differently agree to a few float32 ulps; KL (and CE) weigh
    # log-probability errors of that size by probabilities that sum to one, per position and then per document.
    tolerance = 64 * float(np.finfo(np.float32).eps)
    for fold, (evaluator, settings) in zip(record["folds"], scored):
        table = {(row["K"], row["alpha"]): row for row in fold["selection"]["table"]}
        assert all(row["KL"] == 0.0 for (_, alpha), row in table.items() if alpha == 0)
        shifted = [shifts for shifts in settings if shifts is not None]
        assert {(shifts.k, shifts.alpha) for shifts in shifted} == {key for key in table if key[1] != 0}
        rows = evaluator.ce_kl.rows
        for shifts in shifted:
            row = table[(shifts.k, shifts.alpha)]
            alone = evaluator.evaluate(shifts, [], evaluator.spec.only({"ce", "kl"}), progress=False)[1]
            ce, kl = reference_ce_kl(setup["model"], rows, shifts, progress=False)
            assert row["KL"] == pytest.approx(alone["KL"], abs=tolerance) and row["CE"] == pytest.approx(alone["CE"],
                                                                                                       abs=tolerance)
            assert row["KL"] == pytest.approx(kl, abs=tolerance) and row["CE"] == pytest.approx(ce, abs=tolerance)
        assert max(row["KL"] for row in table.values()) > 100 * tolerance  # the shifts move the model: KL can differ
        rows_of_fold = fold["selection"]["table"]
        assert [row["front"] for row in rows_of_fold] == front_flags(rows_of_fold, "MC2")
        for row in rows_of_fold:
            shown = (f"selection: K {row['K']}, alpha {row['alpha']:g}: MC2 {row['MC2']:.4f}, KL {row['KL']:.4f}, "
                     f"CE {row['CE']:.4f}" + (" (front)" if row["front"] else ""))
            assert shown in lines
        assert fold["selection"]["max_kl"] == budget
        chosen = fold["selection"]["chosen"]
        assert chosen["KL"] <= budget or fold["selection"]["note"]
    assert any(f"set-aside questions under KL <= {budget:g} (--max_kl): K " in text for text in lines)
    assert f"chosen under KL <= {budget:g} (--max_kl): " + "; ".join(
        f"fold {f['fold']}: K {f['K']}, alpha {f['alpha']:g}" for f in record["folds"]) in lines
    assert f"trade-off figure: {record['tradeoff_figure']}" in lines


def test_a_run_under_another_budget_chooses_from_the_table_already_scored(setup, selection_features, tmp_path,
                                                                          monkeypatch):
    """A selection run that differs from a finished one only in --max_kl scores no setting again: it reads that
    run's table (ITI's and the control's) for each fold, says where from, and chooses from it by its own budget."""
    from iti.evaluation import Evaluator
    from iti.runs import read_run
    from iti.selection import choose_setting
    from iti.validate import run_validation

    options = dict(features_dir=str(selection_features), metrics=("mc", "ce", "kl"), owt_path=str(setup["owt"]),
                   control="random_direction", **SELECTION)
    unbounded = run_validation(config(setup, tmp_path, **options), progress=False, log=lambda line: None)
    kls = sorted(row["KL"] for fold in unbounded["folds"] for row in fold["selection"]["table"] if row["KL"] > 0)
    budget = kls[len(kls) // 2]  # some shifted settings fit, some do not

    scored = []
    real = Evaluator.evaluate_settings

    def recording(self, settings, records, *args, **kwargs):
        if len(settings) > 1:  # a fold's selection: the one call that scores every setting
            scored.append(settings)
        return real(self, settings, records, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate_settings", recording)
    lines = []
    bounded = run_validation(config(setup, tmp_path, max_kl=budget, **options), progress=False, log=lines.append)
    assert scored == []
    source = str(next((tmp_path / "results_dump" / "summary_dump").glob(f"{unbounded['name']}*.json")))
    assert read_run(source).identity == unbounded["identity"]
    for before, after in zip(unbounded["folds"], bounded["folds"]):
        for kind in ("selection", "control"):
            was = before[kind] if kind == "selection" else before["control"]["selection"]
            now = after[kind] if kind == "selection" else after["control"]["selection"]
            assert now["table"] == was["table"] and now["counts"] == was["counts"]
            assert now["scored_in"] == source and now["max_kl"] == budget
            assert now["chosen"] == choose_setting(was["table"], "MC2", budget)[0]
        assert (after["K"], after["alpha"]) == (after["selection"]["chosen"]["K"], after["selection"]["chosen"]["alpha"])
    assert any((before["K"], before["alpha"]) != (after["K"], after["alpha"])
               for before, after in zip(unbounded["folds"], bounded["folds"]))  # the budget changed a choice
    assert sum(f"read from {source} (a run that differs from this one only in --max_kl)" in line
               for line in lines) == len(bounded["folds"])

    # A run that differs in anything else (here: no control) scores its own table.
    alone = run_validation(config(setup, tmp_path, max_kl=budget, **{**options, "control": "none"}), progress=False,
                           log=lambda line: None)
    assert len(scored) == len(alone["folds"])
    assert all(fold["selection"]["scored_in"] is None for fold in alone["folds"])
