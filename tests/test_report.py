"""The probe report against scikit-learn: per-head accuracy and ROC AUC, and the best layer from a loop of probes."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score

from iti.folds import rows_of_questions
from iti.probes import fit_sklearn_probes
from iti.report import layer_probe_table, probe_report, report_table, roc_auc

NUM_HEADS, HEAD_DIM, NUM_LAYERS = 3, 4, 4


@pytest.fixture(scope="module")
def synthetic():
    """60 items of 4 rows (2 true, 2 false); heads carry the label with different strengths, some none."""
    rng = np.random.default_rng(0)
    item_ids = np.repeat(np.arange(60), 4)
    labels = np.tile([1, 1, 0, 0], 60)
    signal = rng.normal(size=(NUM_LAYERS, NUM_HEADS * HEAD_DIM)) * rng.uniform(0, 1.5, size=(NUM_LAYERS, 1))
    acts = rng.normal(size=(len(labels), NUM_LAYERS, NUM_HEADS * HEAD_DIM)) + labels[:, None, None] * signal
    layer_acts = rng.normal(size=(len(labels), NUM_LAYERS + 1, 6)) + \
        labels[:, None, None] * rng.normal(size=(NUM_LAYERS + 1, 6)) * np.array([5, 0.1, 0.4, 1.0, 0.2])[:, None]
    train, val, test = np.arange(0, 30), np.arange(30, 45), np.arange(45, 60)
    rows = [rows_of_questions(item_ids, part) for part in (train, val, test)]
    return acts.astype(np.float32), layer_acts.astype(np.float32), labels, item_ids, rows


def test_head_accuracy_and_auc_match_sklearn(synthetic):
    acts, _, labels, item_ids, (train, val, test) = synthetic
    models, probes = fit_sklearn_probes(acts, labels, train, val, NUM_HEADS, seed=0)
    report = probe_report(acts, labels, item_ids, probes, NUM_HEADS, train, val, test)
    table = report.heads.set_index(["layer", "head"])
    for index, clf in enumerate(models):
        layer, head = divmod(index, NUM_HEADS)
        for part, rows in (("val", val), ("test", test)):
            x = acts[rows, layer, head * HEAD_DIM:(head + 1) * HEAD_DIM]
            assert table.loc[(layer, head), f"{part}_accuracy"] == pytest.approx(accuracy_score(labels[rows], clf.predict(x)))
            assert table.loc[(layer, head), f"{part}_auc"] == pytest.approx(
                roc_auc_score(labels[rows], clf.decision_function(x)), abs=1e-12)
    best = table.val_accuracy.to_numpy().argmax()
    assert (report.top_head()["layer"], report.top_head()["head"]) == divmod(int(best), NUM_HEADS)
    assert report.counts == {"train_items": 30, "train_rows": 120, "val_items": 15, "val_rows": 60,
                             "test_items": 15, "test_rows": 60}


def test_auc_with_ties_and_one_class():
    labels, scores = np.array([1, 0, 1, 0, 1]), np.array([0.5, 0.5, 0.9, 0.1, 0.2])
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(roc_auc(np.ones(3), np.arange(3.0)))


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_best_layer_matches_a_loop_of_sklearn_probes(synthetic, backend):
    _, layer_acts, labels, _, (train, val, test) = synthetic
    table = layer_probe_table(layer_acts, labels, train, val, test, backend=backend, seed=0)
    expected = []
    for stream in range(1, layer_acts.shape[1]):  # index 0, the embedding output, is left out
        clf = LogisticRegression(max_iter=1000).fit(layer_acts[train, stream], labels[train])
        expected.append([accuracy_score(labels[rows], clf.predict(layer_acts[rows, stream])) for rows in (val, test)])
    expected = np.array(expected)
    np.testing.assert_allclose(table[["val_accuracy", "test_accuracy"]].to_numpy(), expected)
    assert table.layer.tolist() == list(range(NUM_LAYERS))


def test_report_table_shows_the_run(synthetic):
    acts, layer_acts, labels, item_ids, (train, val, test) = synthetic
    _, probes = fit_sklearn_probes(acts, labels, train, val, NUM_HEADS, seed=0)
    layers = layer_probe_table(layer_acts, labels, train, val, test, backend="sklearn", seed=0)
    summary = probe_report(acts, labels, item_ids, probes, NUM_HEADS, train, val, test, layers).summary([(0, 1), (2, 2)])
    chosen = probe_report(acts, labels, item_ids, probes, NUM_HEADS, train, val, test).heads.set_index(["layer", "head"])
    assert summary["selected_heads"]["val_accuracy"] == pytest.approx(chosen.loc[[(0, 1), (2, 2)], "val_accuracy"].mean())
    lines = report_table([summary], alpha=5, num_heads=2).splitlines()
    best = summary["best_layer"]
    assert lines[2].split(" | ")[1:5] == ["30 (120)", f"{summary['selected_heads']['val_accuracy']:.3f}",
                                          f"{summary['selected_heads']['test_accuracy']:.3f}", "5"]
    assert f"{best['layer']} ({best['val_accuracy']:.3f})" in lines[2]
