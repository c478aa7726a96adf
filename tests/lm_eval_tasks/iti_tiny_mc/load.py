"""The tiny task's items (items.jsonl beside this file) and its per-item scores."""
import json
import math
from pathlib import Path

import datasets


def items(**_metadata) -> datasets.DatasetDict:
    """The test split; lm-eval passes the task's metadata, which the items do not depend on."""
    lines = Path(__file__).with_name("items.jsonl").read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(line) for line in lines if line])})


def scores(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """acc and mass of one item from its choices' log-likelihoods."""
    loglikelihoods = [loglikelihood for loglikelihood, _ in results]
    top = max(loglikelihoods)
    weights = [math.exp(value - top) for value in loglikelihoods]
    return {"acc": float(loglikelihoods.index(top) == doc["label"]), "mass": weights[doc["label"]] / sum(weights)}
