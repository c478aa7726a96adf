"""From features to HeadShifts: probes, head choice, directions, σ (docs/method.md §4).

    shifts, report = fit_head_shifts(features, split, recipe)

or, for several (K, α) of one split, the probes trained once:

    fit = fit_probes(features, split, recipe)
    shifts = fit.head_shifts(k, alpha)

`features` are the probing rows (head-wise activations, labels, each row's question) and the tuning
rows that set σ; `split` names the questions that train the probes and those that rank the heads; the
`recipe` says how many heads, how strong, which directions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from iti.directions import mean_differences, probe_directions, projection_stds, random_directions, unit
from iti.errors import UsageError
from iti.head_shifts import HeadShifts, ShiftProvenance
from iti.models import resolve_device
from iti.folds import rows_of_questions, train_val_split
from iti.probes import ProbeResult, head_dim_of, random_heads, top_heads, train_probes
from iti.report import ProbeReport, layer_probe_table, probe_report

METHODS = ("center_of_mass", "probe", "random")


@dataclass(frozen=True)
class Features:
    """Probing rows [N, L, H·d] with labels and each row's question, the tuning rows that set σ (with their
    questions, -1 for rows of no question of the run), optionally the residual streams [N, L+1, hidden]
    for the probe report's best layer, and what made them (recorded in the shifts' provenance)."""
    acts: np.ndarray
    labels: np.ndarray
    question_ids: np.ndarray
    tuning_acts: np.ndarray
    tuning_question_ids: np.ndarray
    num_heads: int
    layer_acts: np.ndarray | None = None
    provenance: ShiftProvenance = field(default_factory=ShiftProvenance)


@dataclass(frozen=True)
class Split:
    """Questions (not rows): `train` fits the probes, `val` ranks the heads; directions use both. `test`
    questions are scored by the probe report only. `sigma`: the questions whose tuning rows set σ (None:
    every tuning row, the public workflow's choice). `fold`: which fold of a run, for the provenance."""
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    sigma: np.ndarray | None = None
    fold: int | None = None


@dataclass(frozen=True)
class Recipe:
    """K heads, strength α, direction method; how the probes train (backend, device) and the seed of every
    random choice (random heads, random directions, the sklearn backend's state)."""
    num_heads: int
    alpha: float
    method: str = "center_of_mass"
    probe_backend: str = "torch"
    seed: int = 42
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown direction method {self.method!r}; use one of {', '.join(METHODS)}")


def recipe_of(options, num_heads: int, alpha: float) -> Recipe:
    """The recipe a script's options ask for (iti.config.HeadShiftOptions); the torch probes run on the
    evaluated model's GPU when it has one (they are small next to it)."""
    device = resolve_device(options.device)
    return Recipe(num_heads, alpha, options.method, options.probe_backend, options.seed,
                  "cuda" if device == "auto" else device)


def seeded_split(questions: np.ndarray, val_ratio: float, seed: int) -> Split:
    """All `questions` split once with a generator seeded by `seed`: a share 1 - val_ratio (rounded down)
    trains, the rest ranks the heads. The split of edit_weight and plot_head_accuracies (no test fold)."""
    train, val = train_val_split(np.unique(questions), val_ratio, np.random.default_rng(seed))
    return Split(train, val)


def fit_head_shifts(features: Features, split: Split, recipe: Recipe,
                    progress: bool = True) -> tuple[HeadShifts, ProbeReport]:
    """Train a probe per head on the training questions' rows, keep the K heads of best accuracy on the
    validation rows (or K random heads), take their directions and σ; the probe report of the same probes.
    `progress`: the probes' progress bars."""
    fit = fit_probes(features, split, recipe, progress)
    return fit.head_shifts(recipe.num_heads, recipe.alpha), fit.report


@dataclass(frozen=True)
class ProbeFit:
    """The probes of one split, trained once, and their report: the head ranking, the directions and σ do not
    depend on K or α, so every (K, α) of the split is built from this one fit (`head_shifts`)."""
    features: Features
    split: Split
    recipe: Recipe
    probes: ProbeResult
    rows: tuple[np.ndarray, np.ndarray, np.ndarray]  # the probing rows of split.train, split.val, split.test
    report: ProbeReport

    def head_shifts(self, k: int, alpha: float) -> HeadShifts:
        """The K heads of best validation accuracy (or K random heads), their directions and σ, at strength α."""
        features, split, recipe = self.features, self.split, self.recipe
        num_layers, head_dim = features.acts.shape[1], head_dim_of(features.acts, features.num_heads)
        if recipe.method == "random":
            heads = random_heads(num_layers, features.num_heads, k, recipe.seed)
            directions = random_directions(k, head_dim, recipe.seed)
        else:
            heads = top_heads(self.probes.val_accuracies, k)
            directions = (unit(mean_differences(features.acts, features.labels, np.concatenate(self.rows[:2]), heads,
                                                features.num_heads))
                          if recipe.method == "center_of_mass" else probe_directions(self.probes, heads))
        pairs = np.asarray(heads, dtype=np.int64).reshape(-1, 2)
        return HeadShifts(
            layers=pairs[:, 0], heads=pairs[:, 1], directions=directions,
            sigmas=projection_stds(sigma_rows(features, split), heads, directions, features.num_heads),
            probe_accuracies=self.probes.val_accuracies[pairs[:, 0], pairs[:, 1]], alpha=alpha,
            num_layers=num_layers, num_heads=features.num_heads, head_dim=head_dim,
            provenance=dataclasses.replace(
                features.provenance, K=k, method=recipe.method, probe_backend=recipe.probe_backend, seed=recipe.seed,
                fold=split.fold, train_questions=int(len(split.train)), val_questions=int(len(split.val)),
                probe_report=self.report.summary(heads)))


def sigma_rows(features: Features, split: Split) -> np.ndarray:
    """The tuning rows whose projections set σ: those of split.sigma's questions, or all of them."""
    if split.sigma is None:
        return features.tuning_acts
    tuning = np.asarray(features.tuning_acts[rows_of_questions(features.tuning_question_ids, split.sigma)])
    if len(tuning) == 0:
        raise UsageError("the tuning features hold no row of the questions that set σ; extract them for every "
                         "question")
    return tuning


def fit_probes(features: Features, split: Split, recipe: Recipe, progress: bool = True) -> ProbeFit:
    """A probe per head trained on the training questions' rows and scored on the validation rows, and the probe
    report of those probes (with the residual streams' best layer when the features hold them); the recipe's K and
    α play no part (ProbeFit.head_shifts takes them)."""
    if features.tuning_acts.ndim != 3 or features.tuning_acts.shape[1:] != features.acts.shape[1:]:
        raise UsageError(f"tuning activations {features.tuning_acts.shape} and probing activations "
                         f"{features.acts.shape} differ in layers or width; extract both from the same model")
    rows = tuple(rows_of_questions(features.question_ids, part) for part in (split.train, split.val, split.test))
    probes = train_probes(features.acts, features.labels, rows[0], rows[1], features.num_heads,
                          recipe.probe_backend, recipe.device, recipe.seed, progress)
    layers = (None if features.layer_acts is None else
              layer_probe_table(features.layer_acts, features.labels, *rows, recipe.probe_backend, recipe.seed,
                                recipe.device, progress))
    report = probe_report(features.acts, features.labels, features.question_ids, probes, features.num_heads, *rows,
                          layers)
    return ProbeFit(features, split, recipe, probes, rows, report)
