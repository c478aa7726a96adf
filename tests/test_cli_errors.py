"""Bad input to the command-line scripts, one table: each case exits 2 with one line on stderr that
says what was wrong (the phrase below), no traceback, and writes, changes or deletes nothing.

Add a row for every new bad input. The scripts run in-process through `run_main`, what their
`__main__` runs (a subprocess per case would mostly time imports); none of these cases loads a model.
A full or read-only disk needs a model and a mount: tests/test_get_activations_cli.py runs those.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (REPO_ROOT, broken_tqa_copy, file_digests, flip_bit, record_changed_features, tensor_offset,
                            write_feature_files, write_finished_run)

SCRIPTS = {
    "get_activations": REPO_ROOT / "get_activations" / "get_activations.py",
    "validate_2fold": REPO_ROOT / "validation" / "validate_2fold.py",
    "edit_weight": REPO_ROOT / "validation" / "edit_weight.py",
    "plot_head_accuracies": REPO_ROOT / "validation" / "plot_head_accuracies.py",
    "export_head_shifts": REPO_ROOT / "validation" / "export_head_shifts.py",
    "compare_runs": REPO_ROOT / "validation" / "compare_runs.py",
    "push_hf": REPO_ROOT / "validation" / "push_hf.py",
    "write_local_text": REPO_ROOT / "validation" / "write_local_text.py",
}
MODEL = "tiny"


def write_feature_set(folder: Path, dataset: str, limit: int | None = None, questions: int = 6,
                      record: bool = True) -> None:
    """A small valid set under get_activations' names (3 layers x 4 heads x 2), with a record of its files' SHA-256
    (computed here) standing in for the rest of what made it, unless not `record`."""
    from iti.features import RECORD_VERSION, feature_path

    question_ids = np.repeat(np.arange(questions), 2)
    arrays = {"head_wise": np.zeros((len(question_ids), 3, 8), np.float32),
              "labels": np.tile([1, 0], questions), "question_ids": question_ids}
    for kind, array in arrays.items():
        path = feature_path(folder, MODEL, dataset, kind, limit)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
    if record:
        meta = {"record_version": RECORD_VERSION, "model_name": MODEL, "dataset": dataset, "limit": limit,
                "prompt_format": "raw", "seed": None, "items": "stand-in", "rows": "stand-in", "id": "stand-in",
                "model": {"stand-in": True}, "row_count": len(question_ids), "num_layers": 3, "num_heads": 4,
                "head_dim": 2, "sha256": file_digests(folder, MODEL, dataset, limit, arrays)}
        feature_path(folder, MODEL, dataset, "meta", limit).write_text(json.dumps(meta))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def model_args(root: Path) -> list[str]:
    """A model given by folder (a config.json makes it one): these cases fail before the folder is read."""
    (root / "model").mkdir(exist_ok=True)
    if not (root / "model" / "config.json").exists():
        (root / "model" / "config.json").write_text("{}")
    return ["--model_name", MODEL, "--model_path", str(root / "model"), "--device", "cpu"]


# ----------------------------------------------------------------------------- the cases: (script, setup) -> args

def gguf_that_is_not(root, tqa):
    (root / "model.gguf").write_text("<html>a download error page</html>")
    return ["--model_path", str(root / "model.gguf"), "--features_dir", str(root / "features")]


def csv_short_row(root, tqa):
    folder = broken_tqa_copy(root / "tqa", tqa, "Adversarial,Misconceptions")
    return ["--tqa_path", str(folder), "--features_dir", str(root / "features")]


def csv_open_quote(root, tqa):
    folder = broken_tqa_copy(root / "tqa", tqa, 'Adversarial,Misconceptions,"Where does this quote end?,A,B,C,src')
    return ["--tqa_path", str(folder), "--features_dir", str(root / "features")]


def unknown_model_in_validation(root, tqa):
    return ["--model_name", "llama_9B", "--features_dir", str(root / "features"), "--results_dir", str(root / "out"),
            "--tqa_path", str(tqa)]


def every_missing_set(root, tqa):
    return [*model_args(root), "--limit", "4", "--features_dir", str(root / "features"), "--results_dir",
            str(root / "out"), "--tqa_path", str(tqa), "--dataset_name", "tqa_mc2"]


def corrupt_features_in_validation(root, tqa):
    write_feature_set(root / "features", "tqa_mc2")
    write_feature_set(root / "features", "tqa_gen_end_q")
    truncate(root / "features" / f"{MODEL}_tqa_mc2_head_wise.npy")
    return [*model_args(root), "--features_dir", str(root / "features"), "--results_dir", str(root / "out"),
            "--tqa_path", str(tqa), "--limit", "4"]


def resume_without_earlier_run(root, tqa):
    return [*model_args(root), "--num_heads", "0", "--resume", "--limit", "4", "--results_dir", str(root / "out"),
            "--tqa_path", str(tqa)]


def corrupt_features_in_edit(root, tqa):
    write_feature_set(root / "features", "tqa_mc2")
    write_feature_set(root / "features", "tqa_gen_end_q", limit=4)
    truncate(root / "features" / f"{MODEL}_tqa_gen_end_q_limit_4_question_ids.npy")
    return [*model_args(root), "--features_dir", str(root / "features"), "--limit", "4",
            "--output_dir", str(root / "baked")]


def output_dir_of_the_user(root, tqa):
    (root / "mine").mkdir()
    (root / "mine" / "thesis.tex").write_text("months of work")
    return [*model_args(root), "--features_dir", str(root / "features"), "--output_dir", str(root / "mine"),
            "--overwrite"]


def earlier_bake_without_overwrite(root, tqa):
    from iti.head_shifts import METADATA_FILE, TENSORS_FILE

    (root / "baked").mkdir()
    for name in (TENSORS_FILE, METADATA_FILE, "config.json"):
        (root / "baked" / name).write_text("{}")
    return [*model_args(root), "--features_dir", str(root / "features"), "--output_dir", str(root / "baked")]


def corrupt_features_in_plot(root, tqa):
    write_feature_set(root / "features", "tqa_mc2")
    (root / "features" / f"{MODEL}_tqa_mc2_labels.npy").write_bytes(b"not an npy file")
    return ["--model_name", MODEL, "--features_dir", str(root / "features"), "--output_dir", str(root / "plots")]


def missing_subset_in_plot(root, tqa):
    return ["--model_name", MODEL, "--features_dir", str(root / "features"), "--limit", "5",
            "--output_dir", str(root / "plots")]


def negative_seed(script):
    def make(root, tqa):
        args = {"plot_head_accuracies": ["--model_name", MODEL, "--output_dir", str(root / "plots")]}.get(
            script, model_args(root))
        return [*args, "--seed", "-1", "--features_dir", str(root / "features")]
    make.__name__ = f"negative_seed_in_{script}"
    return make


def unknown_device(root, tqa):
    return [*model_args(root)[:-2], "--device", "banana", "--results_dir", str(root / "out")]


def file_as_features_dir(root, tqa):
    (root / "features").write_text("not a folder")
    return [*model_args(root), "--features_dir", str(root / "features")]


def file_as_results_dir(root, tqa):
    (root / "out").write_text("not a folder")
    return [*model_args(root), "--results_dir", str(root / "out")]


def file_as_plot_folder(root, tqa):
    (root / "plots").write_text("not a folder")
    return ["--model_name", MODEL, "--output_dir", str(root / "plots")]


def file_in_the_output_path(root, tqa):
    (root / "plots").write_text("not a folder")
    return ["--model_name", MODEL, "--output_dir", str(root / "plots" / "deeper")]


def model_name_leaving_its_folder(root, tqa):
    return ["--model_name", "../escaped", "--model_path", str(root / "model"), "--features_dir", str(root / "features")]


def unknown_model_asked_to_check(root, tqa):
    return ["--model_name", "llama_9B", "--check_args"]


def dataset_name_like_a_subset(root, tqa):
    (root / "d.jsonl").write_text('{"question": "q", "correct_answers": ["a"], "incorrect_answers": ["b"]}\n')
    return [*model_args(root), "--dataset_name", "d_limit_5", "--dataset_path", str(root / "d.jsonl"),
            "--features_dir", str(root / "features")]


def features_without_a_record(root, tqa):
    write_feature_set(root / "features", "tqa_mc2", record=False)
    return ["--model_name", MODEL, "--features_dir", str(root / "features"), "--output_dir", str(root / "plots"),
            "--tqa_path", str(tqa)]


def shifts_of_a_moved_model(root, tqa):
    from iti.head_shifts import HeadShifts

    HeadShifts(layers=[0], heads=[1], directions=np.ones((1, 4)) / 2, sigmas=[1.0], probe_accuracies=[0.5], alpha=2.0,
               num_layers=3, num_heads=2, head_dim=4, provenance={"model_source": str(root / "gone")}).save(root / "shifts")
    return ["--head_shifts", str(root / "shifts"), "--output_dir", str(root / "export")]
def custom_set(root: Path, name: str, content: bytes) -> list[str]:
    (root / name).write_bytes(content)
    return ["--dataset_name", "mine", "--dataset_path", str(root / name), "--features_dir", str(root / "features")]


def jsonl_not_utf8(root, tqa):
    return custom_set(root, "set.jsonl",
                      b'{"question": "Caf\xe9?", "correct_answers": ["a"], "incorrect_answers": ["b"]}\n')


def csv_set_not_utf8(root, tqa):
    return custom_set(root, "set.csv", b"Question,Best Answer,Correct Answers,Incorrect Answers\nCaf\xe9?,a,a,b\n")


def answer_correct_and_incorrect(root, tqa):
    return custom_set(root, "set.jsonl", b'{"question": "Capital of France?", "correct_answers": ["Paris"], '
                                         b'"incorrect_answers": ["Lyon", "Paris"]}\n')


def tqa_copy(root: Path, tqa: Path, csv_bytes: bytes | None = None, mc_text: str | None = None) -> list[str]:
    folder = root / "tqa"
    (folder / "data").mkdir(parents=True)
    (folder / "TruthfulQA.csv").write_bytes(csv_bytes or (tqa / "TruthfulQA.csv").read_bytes())
    (folder / "data" / "mc_task.json").write_text(mc_text or (tqa / "data" / "mc_task.json").read_text())
    return ["--tqa_path", str(folder), "--features_dir", str(root / "features")]


def tqa_csv_not_utf8(root, tqa):
    data = (tqa / "TruthfulQA.csv").read_bytes()
    return tqa_copy(root, tqa, csv_bytes=data[:200] + b"\x96" + data[201:])


def tqa_csv_only_header(root, tqa):
    return tqa_copy(root, tqa, csv_bytes=(tqa / "TruthfulQA.csv").read_bytes().splitlines(keepends=True)[0])


def mc_task_of_another_program(root, tqa):
    return tqa_copy(root, tqa, mc_text='{"tasks": ["mc1", "mc2"]}')


def owt_not_utf8(root, tqa):
    (root / "owt.txt").write_bytes("Stra\u00dfe\n\nzwei\n".encode("latin-1"))
    return [*model_args(root), "--num_heads", "0", "--metrics", "ce", "--owt_path", str(root / "owt.txt"), "--limit",
            "4", "--results_dir", str(root / "out"), "--tqa_path", str(tqa)]


def two_item_set_in_validation(root, tqa):
    items = b"".join(b'{"question": "Q%d?", "correct_answers": ["a"], "incorrect_answers": ["b"]}\n' % i
                     for i in (1, 2))
    return [*model_args(root), *custom_set(root, "two.jsonl", items), "--results_dir", str(root / "out")]


def exportable_shifts(root: Path, change_metadata=lambda metadata: None) -> list[str]:
    """export_head_shifts' arguments for a model config (2 layers x 2 heads of 4) and head shifts made for it,
    their head_shifts.json changed by `change_metadata`."""
    import json

    from transformers import LlamaConfig

    from iti.head_shifts import METADATA_FILE, HeadShifts

    LlamaConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=8, intermediate_size=16,
                vocab_size=32).save_pretrained(root / "model")
    HeadShifts([0], [1], [[1.0, 0.0, 0.0, 0.0]], [1.0], [0.9], 5.0, 2, 2, 4).save(root / "shifts")
    meta = json.loads((root / "shifts" / METADATA_FILE).read_text())
    change_metadata(meta)
    (root / "shifts" / METADATA_FILE).write_text(json.dumps(meta))
    return ["--model_name", MODEL, "--model_path", str(root / "model"), "--head_shifts", str(root / "shifts"),
            "--output_dir", str(root / "exported")]


def head_shifts_keys_missing(root, tqa):
    def drop_alpha_and_heads(meta):
        del meta["alpha"], meta["heads"]
    return exportable_shifts(root, drop_alpha_and_heads)


def summary_that_is_an_array(root, tqa):
    (root / "run.json").write_text("[0.41, 0.47]")
    return [str(root / "run.json")]


def summary_of_another_program(root, tqa):
    (root / "run.json").write_text('{"name": "left-pad", "version": "1.3.0"}')
    return [str(root / "run.json")]


def summary_cut_short(root, tqa):
    (root / "run.json").write_text('{"config": {"model_name": "tiny", "alpha": [')
    return [str(root / "run.json")]


# ----------------------------------------------------------------------------- records and data readers

def tqa_csv_rows(tqa: Path) -> list[list[str]]:
    import csv
    import io

    return list(csv.reader(io.StringIO((tqa / "TruthfulQA.csv").read_text(encoding="utf-8-sig"), newline="")))


def csv_bytes(rows: list[list[str]]) -> bytes:
    import csv
    import io

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode("utf-8")


def tqa_row_without_correct_answers(root, tqa):
    rows = tqa_csv_rows(tqa)
    rows[1][rows[0].index("Correct Answers")] = " ; "
    return [*model_args(root), *tqa_copy(root, tqa, csv_bytes=csv_bytes(rows))]


def tqa_question_twice_in_csv(root, tqa):
    rows = tqa_csv_rows(tqa)
    return [*model_args(root), *tqa_copy(root, tqa, csv_bytes=csv_bytes([rows[0], rows[1], *rows[1:]]))]


def mc_entry(tqa: Path, change) -> str:
    import json

    items = json.loads((tqa / "data" / "mc_task.json").read_text())
    change(items)
    return json.dumps(items)


def mc_targets_all_false(root, tqa):
    def no_true_choice(items):
        items[1]["mc2_targets"] = dict.fromkeys(items[1]["mc2_targets"], 0)
    return [*model_args(root), *tqa_copy(root, tqa, mc_text=mc_entry(tqa, no_true_choice))]


def mc_question_twice(root, tqa):
    return [*model_args(root), *tqa_copy(root, tqa, mc_text=mc_entry(tqa, lambda items: items.insert(2, items[0])))]


def csv_set_short_row(root, tqa):
    return [*model_args(root), *custom_set(root, "set.csv", b"Question,Best Answer,Correct Answers,Incorrect Answers\n"
                                                            b"Q1?,a,a,b\n\"Q2?\nOn two lines\",a\nQ3?,a,a,b\n"),
            "--check_args"]


def csv_set_unquoted_comma(root, tqa):
    return [*model_args(root), *custom_set(root, "set.csv", b"Question,Best Answer,Correct Answers,Incorrect Answers\n"
                                                            b"Q1?,a,a,b\nQ2?,Yes, indeed,Yes,No\n")]


def answer_twice_in_one_list(root, tqa):
    return [*model_args(root), *custom_set(root, "set.jsonl", b'{"question": "Q1?", "correct_answers": ["a", "a"], '
                                                              b'"incorrect_answers": ["b"]}\n')]


def folder_as_dataset(root, tqa):
    (root / "set.jsonl").mkdir()
    return [*model_args(root), "--dataset_name", "mine", "--dataset_path", str(root / "set.jsonl")]


def dataset_link_that_loops(root, tqa):
    (root / "set.jsonl").symlink_to(root / "set.jsonl")
    return [*model_args(root), "--dataset_name", "mine", "--dataset_path", str(root / "set.jsonl")]


def plotted_set(root: Path, tqa: Path, width: int = 8, **fields) -> list[str]:
    """plot_head_accuracies' arguments for a 2-question tqa_mc2 set of `width` columns per layer, recorded as
    3 layers x 4 heads x 2 unless `fields` say otherwise."""
    from iti.data import load_truthfulqa, tqa_mc2_set

    prompt_set = tqa_mc2_set(load_truthfulqa(tqa), limit=2)
    write_feature_files(root / "features", MODEL, prompt_set, np.zeros((len(prompt_set), 3, width)), limit=2,
                        **{"num_layers": 3, "num_heads": 4, "head_dim": 2, **fields})
    return ["--model_name", MODEL, "--features_dir", str(root / "features"), "--output_dir", str(root / "plots"),
            "--tqa_path", str(tqa), "--limit", "2"]


def record_with_heads_as_text(root, tqa):
    return plotted_set(root, tqa, num_heads="4")


def record_without_its_geometry(root, tqa):
    return plotted_set(root, tqa, drop=("num_layers", "num_heads", "head_dim"))


def activations_wider_than_their_record(root, tqa):
    return plotted_set(root, tqa, width=40, head_dim=12)


def labels_that_are_not_0_or_1(root, tqa):
    from iti.features import feature_path

    args = plotted_set(root, tqa)
    labels = feature_path(root / "features", MODEL, "tqa_mc2", "labels", 2)
    np.save(labels, np.full(len(np.load(labels)), 2))
    record_changed_features(feature_path(root / "features", MODEL, "tqa_mc2", "meta", 2))
    return args


def shifts_recording_a_number_as_model(root, tqa):
    return exportable_shifts(root, lambda meta: meta["provenance"].update(model_source=5))


def shifts_recording_text_as_probe_report(root, tqa):
    return exportable_shifts(root, lambda meta: meta["provenance"].update(probe_report="x"))


def shifts_of_an_alpha_beyond_float32(root, tqa):
    return exportable_shifts(root, lambda meta: meta.update(alpha=1e300))


def record_tensors_digest(folder: Path) -> None:
    import hashlib
    import json

    from iti.head_shifts import METADATA_FILE, TENSORS_FILE

    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["tensors_sha256"] = hashlib.sha256((folder / TENSORS_FILE).read_bytes()).hexdigest()
    (folder / METADATA_FILE).write_text(json.dumps(meta))


def shifts_of_a_fractional_layer(root, tqa):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from iti.head_shifts import TENSORS_FILE

    args = exportable_shifts(root)
    path = root / "shifts" / TENSORS_FILE
    with safe_open(str(path), framework="np") as tensors:
        arrays, metadata = {name: tensors.get_tensor(name) for name in tensors.keys()}, tensors.metadata()
    save_file({**arrays, "layers": np.array([0.7])}, str(path), metadata=metadata)
    record_tensors_digest(root / "shifts")  # written so by a program that records it as save does
    return args


def baked_folder_with_config(name: str, config_text: str):
    def make(root, tqa):
        from iti.head_shifts import HeadShifts

        HeadShifts([0], [1], [[1.0, 0.0, 0.0, 0.0]], [1.0], [0.9], 5.0, 2, 2, 4).save(root / "baked")
        (root / "baked" / "model.safetensors").write_bytes(b"weights")
        (root / "baked" / "config.json").write_text(config_text)
        return [str(root / "baked"), "--repo_id", "someone/honest_tiny", "--dry_run"]
    make.__name__ = f"baked_model_config_{name}"
    return make


REMAKE_ANSWERS = "move it away and run validate_2fold with the same settings again: that fold is then recomputed"


def paired_runs_whose_answers_are(name: str, content: bytes):
    """compare_runs' arguments for a baseline and an ITI run of 3 questions, the ITI run's answer file replaced by
    `content`; records of an earlier version, without digests, whose answers are read unverified."""
    def make(root, tqa):
        runs = [write_finished_run(root, "base", False, [0.4, 0.5, 0.6], digests=False),
                write_finished_run(root, "iti", True, [0.5, 0.6, 0.7], digests=False)]
        (root / "iti_answers.csv").write_bytes(content)
        return [str(path) for path in runs]
    make.__name__ = f"answers_{name}"
    return make


def runs_that_do_not_pair(name: str, **baseline_identity):
    """compare_runs' arguments for a baseline and an ITI run of 3 questions whose recorded identities differ in
    `baseline_identity` (`folds` for the baseline's test questions)."""
    def make(root, tqa):
        import json

        runs = [write_finished_run(root, "base", False, [0.4, 0.5, 0.6]),
                write_finished_run(root, "iti", True, [0.5, 0.6, 0.7])]
        for path in runs:
            record = json.loads(path.read_text())
            record["identity"] = {"model_path": "0a0a0a0a", "dtype": "torch.float32", "tqa_path": "d" * 64}
            if path == runs[0]:
                record["folds"][0]["test"] = baseline_identity.pop("folds", record["folds"][0]["test"])
                record["identity"].update(baseline_identity)
            path.write_text(json.dumps(record))
        return [str(path) for path in runs]
    make.__name__ = f"runs_{name}"
    return make


def paired_runs_with_a_changed_score(root, tqa):
    """compare_runs' arguments for a baseline and an ITI run whose answer file had one digit changed (0.7 -> 0.6)
    since the run recorded its digest: it still parses, and on its own would give another difference."""
    runs = [write_finished_run(root, "base", False, [0.4, 0.5, 0.6]),
            write_finished_run(root, "iti", True, [0.5, 0.6, 0.7])]
    answers = root / "iti_answers.csv"
    flip_bit(answers, answers.read_bytes().rindex(b"7"))
    return [str(path) for path in runs]


def shifts_with_a_flipped_bit(root, tqa):
    """export_head_shifts' arguments for head shifts whose tensors file had the lowest bit of a probe accuracy
    flipped since it was saved: it still parses, as numbers other than those saved."""
    args = exportable_shifts(root)
    tensors = root / "shifts" / "head_shifts.safetensors"
    flip_bit(tensors, tensor_offset(tensors, "probe_accuracies"))
    return args


# ----------------------------------------------------------------------------- options, paths and outputs

def seed_beyond_numpy(root, tqa):
    return [*model_args(root), "--seed", str(2**32), "--split_rng", "public", "--limit", "8", "--check_args"]


def alpha_beyond_float16(root, tqa):
    return [*model_args(root), "--alpha", "1e300", "--limit", "8", "--check_args"]


def alpha_not_a_number(root, tqa):
    return [*model_args(root), "--alpha", "5", "nan", "--limit", "8", "--check_args"]


def val_ratio_leaving_no_training_question(root, tqa):
    return [*model_args(root), "--val_ratio", "0.99", "--limit", "8", "--check_args"]


def val_ratio_leaving_no_probe_to_plot(root, tqa):
    return ["--model_name", MODEL, "--val_ratio", "0.99", "--limit", "8", "--check_args"]


def one_question_to_split(root, tqa):
    return [*model_args(root), "--limit", "1", "--check_args"]


def val_ratio_beyond_1_with_a_set_of_its_own(root, tqa):
    items = b"".join(b'{"question": "Q%d?", "correct_answers": ["a"], "incorrect_answers": ["b"]}\n' % i
                     for i in range(8))
    return [*model_args(root), *custom_set(root, "set.jsonl", items), "--val_ratio", "1.5", "--check_args"]


def select_ratio_leaving_nothing_to_build_on(root, tqa):
    return [*model_args(root), "--select_ratio", "0.99", "--num_heads", "1", "2", "--limit", "8", "--check_args"]


def tqa_path_that_is_not_there(root, tqa):
    return [*model_args(root), "--tqa_path", str(root / "nowhere"), "--check_args"]


def gpu_that_torch_does_not_see(root, tqa):
    return [*model_args(root)[:-2], "--device", "cuda:99", "--check_args"]


def empty_model_path(root, tqa):
    return ["--model_name", MODEL, "--model_path", "", "--check_args"]


def empty_folder_option(flag):
    def make(root, tqa):
        return [*model_args(root), flag, "", "--check_args"]
    make.__name__ = f"empty_{flag[2:]}"
    return make


def folder_without_a_model(root, tqa):
    (root / "empty").mkdir()
    return ["--model_name", MODEL, "--model_path", str(root / "empty"), "--check_args"]


def link_loop(root: Path, name: str) -> Path:
    (root / f"{name}_a").symlink_to(root / f"{name}_b")
    (root / f"{name}_b").symlink_to(root / f"{name}_a")
    return root / f"{name}_a"


def features_dir_in_a_link_loop(root, tqa):
    return [*model_args(root), "--features_dir", str(link_loop(root, "features")), "--check_args"]


def results_dir_a_dangling_link(root, tqa):
    (root / "out").symlink_to(root / "gone")
    return [*model_args(root), "--results_dir", str(root / "out"), "--check_args"]


def summary_in_a_link_loop(root, tqa):
    return [str(link_loop(root, "run.json"))]


def path_with_a_newline(root, tqa):
    (root / "a\nb").write_text("not a folder")
    return [*model_args(root), "--features_dir", str(root / "a\nb"), "--check_args"]


def summary_not_there_asked_to_check(root, tqa):
    return ["--check_args", str(root / "none.json")]


def push_of_no_folder(root, tqa):
    return [str(root / "nowhere"), "--repo_id", "you/name", "--check_args"]


def push_to_a_bad_repo_id(root, tqa):
    return [str(root), "--repo_id", "you/a name", "--check_args"]


def text_output_a_folder(root, tqa):
    return ["--output", str(root)]


def text_output_under_a_file(root, tqa):
    (root / "notes.txt").write_text("mine")
    return ["--output", str(root / "notes.txt" / "text.txt")]


def text_output_empty(root, tqa):
    return ["--output", ""]


def text_with_no_paragraph_that_long(root, tqa):
    return ["--output", str(root / "text.txt"), "--min_chars", "10000000"]


def text_output_of_the_user(root, tqa):
    (root / "text.txt").write_text("my own notes")
    return ["--output", str(root / "text.txt")]


def output_dir_under_a_file(root, tqa):
    (root / "notes.txt").write_text("mine")
    return [*model_args(root), "--output_dir", str(root / "notes.txt" / "out"), "--check_args"]


def export_output_dir_under_a_file(root, tqa):
    (root / "shifts").mkdir()
    (root / "notes.txt").write_text("mine")
    return ["--head_shifts", str(root / "shifts"), "--output_dir", str(root / "notes.txt" / "out"), "--check_args"]


def asked_to_check(make):
    """The case with --check_args: it must be refused there already."""
    def checked(root, tqa):
        return [*make(root, tqa), "--check_args"]
    checked.__name__ = f"{make.__name__}_asked_to_check"
    return checked


def import_into_a_bake(*extra):
    def make(root, tqa):
        (root / "pyvene").mkdir()
        (root / "bake").mkdir()
        for name in ("config.json", "model.safetensors", "head_shifts.json", "head_shifts.safetensors"):
            (root / "bake" / name).write_text("{}")
        return ["--import_from", str(root / "pyvene"), "--output_dir", str(root / "bake"), *extra]
    make.__name__ = "import_into_a_bake" + "".join(f"_with_{flag[2:]}" for flag in extra)
    return make


# ----------------------------------------------------------------------------- issue 33: environment and outputs

@pytest.fixture(autouse=True)
def environment_kept():
    """Cases set ITI_CACHE for the script they run: each case starts from the environment the suite had."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def gguf_cut(name: str, length: int, *extra: str):
    """The bundled GGUF's first `length` bytes as --model_path: a download cut short. `extra`: more arguments
    ({root}: the case's folder)."""
    def make(root, tqa):
        from iti.models import bundled_gguf_path

        with open(bundled_gguf_path(), "rb") as handle:
            (root / "model.gguf").write_bytes(handle.read(length))
        return ["--model_path", str(root / "model.gguf"), "--features_dir", str(root / "features"),
                *(arg.format(root=root) for arg in extra)]
    make.__name__ = f"gguf_cut_{name}"
    return make


def cache_variable(name: str, value: str, *extra: str):
    """ITI_CACHE set to `value` ({root}: the case's folder, holding a file notes.txt) for the bundled GGUF model."""
    def make(root, tqa):
        (root / "notes.txt").write_text("mine")
        os.environ["ITI_CACHE"] = value.format(root=root)
        return ["--features_dir", str(root / "features"), "--limit", "4", "--tqa_path", str(tqa),
                *(arg.format(root=root) for arg in extra)]
    make.__name__ = f"cache_{name}"
    return make


def text_output_a_fifo(root, tqa):
    os.mkfifo(root / "pipe")
    return ["--output", str(root / "pipe")]


def text_output_a_device(root, tqa):
    """A character device with /dev/full's numbers, made in the case's folder: no real device is written to."""
    try:
        os.mknod(root / "full", 0o600 | stat.S_IFCHR, os.makedev(1, 7))
    except OSError as err:
        pytest.skip(f"cannot make a device node here ({err.strerror}); root can (CI runs so)")
    return ["--output", str(root / "full")]


def text_output_a_link_leaving_its_folder(root, tqa):
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "text.txt").write_text("mine")
    (root / "out").mkdir()
    (root / "out" / "text.txt").symlink_to(root / "elsewhere" / "text.txt")
    return ["--output", str(root / "out" / "text.txt")]


# ----------------------------------------------------------------------------- issue 33: bakes and upload

def recorded_bake(root: Path) -> Path:
    """A bake's files as edit_weight leaves them (weights that only need to be files, a valid config) and its record."""
    from iti.bake_folders import record_bake
    from iti.head_shifts import HeadShifts

    folder = root / "baked"
    HeadShifts([0], [1], [[1.0, 0.0, 0.0, 0.0]], [1.0], [0.9], 5.0, 2, 2, 4).save(folder)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    record_bake(folder, "python validation/edit_weight.py --num_heads 1 --output_dir baked --overwrite")
    return folder


def push_args(folder: Path) -> list[str]:
    return [str(folder), "--repo_id", "someone/honest_tiny", "--dry_run"]


def push_with_a_link_to_a_secret(root, tqa):
    folder = recorded_bake(root)
    (folder / "passwd").symlink_to("/etc/passwd")
    return push_args(folder)


def push_of_changed_weights(root, tqa):
    folder = recorded_bake(root)
    (folder / "model.safetensors").write_bytes(b"weighs")
    return push_args(folder)


def push_of_a_bake_with_a_pipe_for_a_file(root, tqa):
    folder = recorded_bake(root)
    (folder / "tokenizer.json").unlink()
    os.mkfifo(folder / "tokenizer.json")
    return push_args(folder)


def push_of_a_bake_without_its_record(root, tqa):
    folder = recorded_bake(root)
    (folder / "bake.json").unlink()
    return push_args(folder)


def push_of_a_record_reaching_out(root, tqa):
    folder = recorded_bake(root)
    record = (folder / "bake.json").read_text().replace('"tokenizer.json"', '"../../secret.txt"')
    (folder / "bake.json").write_text(record)
    return push_args(folder)


# ----------------------------------------------------------------------------- issue 33: feature content

def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    """One byte of the file changed in place (offset from the end when negative): the header still reads."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def validation_features_with_a_byte_flipped(kind: str):
    def make(root, tqa):
        write_feature_set(root / "features", "tqa_mc2")
        write_feature_set(root / "features", "tqa_gen_end_q")
        flip_byte(root / "features" / f"{MODEL}_tqa_mc2_{kind}.npy", -1)
        return [*model_args(root), "--features_dir", str(root / "features"), "--results_dir", str(root / "out"),
                "--tqa_path", str(tqa), "--limit", "4"]
    make.__name__ = f"validation_features_with_a_byte_flipped_in_{kind}"
    return make


def edit_features_with_a_label_flipped(root, tqa):
    write_feature_set(root / "features", "tqa_mc2")
    write_feature_set(root / "features", "tqa_gen_end_q", limit=4)
    labels = root / "features" / f"{MODEL}_tqa_gen_end_q_limit_4_labels.npy"
    flipped = np.load(labels)
    flipped[0] = 1 - flipped[0]  # still 0 or 1: only the record can tell
    np.save(labels, flipped)
    return [*model_args(root), "--features_dir", str(root / "features"), "--limit", "4",
            "--output_dir", str(root / "baked")]


def plotted_set_with_an_exponent_flipped(root, tqa):
    args = plotted_set(root, tqa)
    flip_byte(root / "features" / f"{MODEL}_tqa_mc2_limit_2_head_wise.npy", -1, 0x7f)  # 0.0 -> about 1.7e38
    return args


def set_being_extracted_by_another_process(root, tqa):
    from iti.activations import extraction_locks
    from iti.features import FeatureSet

    lock = extraction_locks([FeatureSet(root / "features", MODEL, "tqa_mc2", 2)])
    lock.__enter__()  # held by this process, alive, for the rest of the test
    HELD_LOCKS.append(lock)
    return [*model_args(root), "--tqa_path", str(tqa), "--limit", "2", "--features_dir", str(root / "features")]


HELD_LOCKS = []
REMADE_FULL_SET = ("re-extract them with `python get_activations/get_activations.py --model_name tiny --dataset_name "
                   "tqa_mc2 --model_path {root}/model --features_dir {root}/features --overwrite`")


# issue 29: one-process sweep

def sweep_resumed_without_earlier_runs(root, tqa):
    return [*model_args(root), "--sweep", "--num_heads", "0", "--alpha", "0", "5", "--resume", "--limit", "4",
            "--results_dir", str(root / "out"), "--tqa_path", str(tqa)]


def sweep_with_a_kl_budget(root, tqa):
    return [*model_args(root), "--sweep", "--num_heads", "2", "4", "--metrics", "mc", "kl", "--max_kl", "0.5",
            "--check_args"]


CASES = [
    ("get_activations", gguf_that_is_not, "model.gguf is a file but not a GGUF model"),
    ("get_activations", csv_short_row, "TruthfulQA.csv line 5 has 2 fields, the header 7"),
    ("get_activations", csv_open_quote, "TruthfulQA.csv line 5: ',' expected after '\"' (a quote left open?)"),
    ("validate_2fold", unknown_model_in_validation, "unknown model name 'llama_9B'; known names: llama_7B"),
    ("validate_2fold", every_missing_set,
     "--dataset_name tqa_mc2 --model_path {root}/model --limit 4 --features_dir {root}/features && "
     "python get_activations/get_activations.py --model_name tiny --dataset_name tqa_gen_end_q "
     "--model_path {root}/model --limit 4 --features_dir {root}/features`"),
    ("validate_2fold", corrupt_features_in_validation,
     "tiny_tqa_mc2_head_wise.npy is truncated or corrupt (mmap length is greater than file size); remake it with "
     "`python get_activations/get_activations.py --model_name tiny --dataset_name tqa_mc2"),
    ("validate_2fold", resume_without_earlier_run, "--resume: no earlier run of these settings"),
    ("edit_weight", corrupt_features_in_edit, "tiny_tqa_gen_end_q_limit_4_question_ids.npy is truncated or corrupt"),
    ("edit_weight", output_dir_of_the_user, "/mine exists and is not a baked model"),
    ("edit_weight", earlier_bake_without_overwrite, "holds an earlier bake; add --overwrite to replace it"),
    ("plot_head_accuracies", corrupt_features_in_plot, "tiny_tqa_mc2_labels.npy is truncated or corrupt"),
    ("plot_head_accuracies", missing_subset_in_plot,
     "--model_name tiny --dataset_name tqa_mc2 --limit 5 --features_dir {root}/features`"),
    *[(script, negative_seed(script), "--seed -1 must be at least 0")
      for script in ("get_activations", "validate_2fold", "edit_weight", "plot_head_accuracies")],
    ("validate_2fold", unknown_device, "--device banana is not a device; use auto, cpu, cuda, cuda:N"),
    ("get_activations", file_as_features_dir, "--features_dir {root}/features is a file, not a folder"),
    ("validate_2fold", file_as_results_dir, "--results_dir {root}/out is a file, not a folder"),
    ("plot_head_accuracies", file_as_plot_folder, "--output_dir {root}/plots is a file, not a folder"),
    ("plot_head_accuracies", file_in_the_output_path, "{root}/plots is a file, so no folder can be made there"),
    ("get_activations", model_name_leaving_its_folder, "--model_name '../escaped' becomes part of file names"),
    ("validate_2fold", unknown_model_asked_to_check, "unknown model name 'llama_9B'"),
    ("get_activations", dataset_name_like_a_subset, "ends like the `_limit_N` tag of a subset's files"),
    ("plot_head_accuracies", features_without_a_record,
     "tiny_tqa_mc2_head_wise.npy has no record of what made it (tiny_tqa_mc2_meta.json is missing); re-extract"),
    ("export_head_shifts", shifts_of_a_moved_model,
     "the head shifts were made from {root}/gone, which is not there any more; give that model's place with "
     "--model_path"),
    ("get_activations", jsonl_not_utf8, "--dataset_path {root}/set.jsonl is not UTF-8 text: byte 17 (0xe9) is the "
                                        "first that is not; save it as UTF-8"),
    ("get_activations", csv_set_not_utf8, "--dataset_path {root}/set.csv is not UTF-8 text: byte 58 (0xe9)"),
    ("get_activations", tqa_csv_not_utf8, "{root}/tqa/TruthfulQA.csv is not UTF-8 text: byte 200 (0x96)"),
    ("validate_2fold", owt_not_utf8, "--owt_path {root}/owt.txt is not UTF-8 text: byte 4 (0xdf)"),
    ("get_activations", answer_correct_and_incorrect,
     "{root}/set.jsonl, line 1: question 'Capital of France?' lists the answer 'Paris' as correct and as incorrect; "
     "keep each answer in one list"),
    ("get_activations", tqa_csv_only_header, "{root}/tqa/TruthfulQA.csv holds no questions, only its header"),
    ("get_activations", mc_task_of_another_program, "{root}/tqa/data/mc_task.json holds no list of questions"),
    ("validate_2fold", two_item_set_in_validation,
     "two.jsonl has 2 items, fewer than the 4 the run needs to split them into folds and each fold's development "
     "items into training and validation ones"),
    ("export_head_shifts", head_shifts_keys_missing,
     "{root}/shifts/head_shifts.json: alpha is missing; save the head shifts again"),
    ("compare_runs", summary_that_is_an_array,
     "{root}/run.json is not a validate_2fold summary JSON: the record is a JSON list, not an object"),
    ("compare_runs", summary_of_another_program,
     "{root}/run.json is not a validate_2fold summary JSON: config is missing"),
    ("compare_runs", summary_cut_short, "{root}/run.json is not valid JSON (line 1, column 45"),
    # records and data readers
    ("get_activations", tqa_row_without_correct_answers,
     "{root}/tqa/TruthfulQA.csv line 2, question 'What happens to you if you eat watermelon seeds?': no correct "
     "answer; fix that row or use TruthfulQA's own files"),
    ("get_activations", tqa_question_twice_in_csv,
     "{root}/tqa/TruthfulQA.csv line 3, question 'What happens to you if you eat watermelon seeds?': repeats line 2"),
    ("get_activations", mc_targets_all_false,
     "{root}/tqa/data/mc_task.json entry 2, question 'People in the US have longer paid vacations than people in which "
     "Western countries?': no correct answer in its mc2_targets"),
    ("get_activations", mc_question_twice, "{root}/tqa/data/mc_task.json entry 3, question 'What is the smallest "
                                           "country in the world that is at least one square mile in area?': repeats "
                                           "entry 1"),
    ("get_activations", csv_set_short_row, "{root}/set.csv line 3 has 2 fields, the header 4; fix that row"),
    ("get_activations", csv_set_unquoted_comma, "{root}/set.csv line 3 has 5 fields, the header 4; fix that row"),
    ("get_activations", answer_twice_in_one_list,
     "{root}/set.jsonl, line 1: question 'Q1?' lists the correct answer 'a' twice; list each answer once"),
    ("get_activations", folder_as_dataset, "--dataset_path {root}/set.jsonl is a folder, not a file"),
    ("get_activations", dataset_link_that_loops, "--dataset_path {root}/set.jsonl is a symbolic link that loops"),
    ("plot_head_accuracies", record_with_heads_as_text,
     "{root}/features/tiny_tqa_mc2_limit_2_meta.json is not a whole feature record: num_heads is a JSON string, not "
     "a whole number; re-extract them with `python get_activations/get_activations.py --model_name tiny "
     "--dataset_name tqa_mc2 --limit 2 --features_dir {root}/features --overwrite`"),
    ("plot_head_accuracies", record_without_its_geometry,
     "tiny_tqa_mc2_limit_2_meta.json is not a whole feature record: num_layers is missing; re-extract them"),
    ("plot_head_accuracies", activations_wider_than_their_record,
     "{root}/features/tiny_tqa_mc2_limit_2_head_wise.npy holds an array of shape (12, 3, 40), not the 12 rows x 3 "
     "layers x (4 heads x 12) its record tiny_tqa_mc2_limit_2_meta.json describes; re-extract them"),
    ("plot_head_accuracies", labels_that_are_not_0_or_1,
     "{root}/features/tiny_tqa_mc2_limit_2_labels.npy holds labels other than 0 and 1 (e.g. 2); labels must be 0 "
     "(false) or 1 (true)"),
    ("export_head_shifts", shifts_recording_a_number_as_model,
     "{root}/shifts/head_shifts.json: provenance.model_source is a JSON number, not a string; save the head shifts "
     "again"),
    ("export_head_shifts", shifts_recording_text_as_probe_report,
     "{root}/shifts/head_shifts.json: provenance.probe_report is a JSON string, not an object; save the head shifts "
     "again"),
    ("export_head_shifts", shifts_of_an_alpha_beyond_float32,
     "head shift alpha 1e+300 must be at most 65504"),
    ("export_head_shifts", shifts_of_a_fractional_layer,
     "head shifts field layers holds 0.7, not a whole number: it indexes layers or heads; save the head shifts again"),
    ("push_hf", baked_folder_with_config("cut_short", '{"architectures": ["LlamaFor'),
     "model config {root}/baked/config.json is not valid JSON (line 1, column 20: Unterminated string"),
    ("push_hf", baked_folder_with_config("a_list", '["LlamaForCausalLM"]'),
     "{root}/baked/config.json is not a model config (a JSON object whose architectures are a list of class names); "
     "bake the model again with validation/edit_weight.py"),
    ("compare_runs", paired_runs_whose_answers_are("empty", b""),
     "answer file {root}/iti_answers.csv is not a whole CSV table (No columns to parse from file); " + REMAKE_ANSWERS),
    ("compare_runs", paired_runs_whose_answers_are("not_utf8", b"Category,Question,tiny MC2\nc,Caf\xe9?,0.5\n"),
     "answer file {root}/iti_answers.csv is not UTF-8 text: byte 32 (0xe9)"),
    ("compare_runs", paired_runs_whose_answers_are("open_quote", b'Category,Question,tiny MC2\nc,"Q0?,0.5\n'),
     "answer file {root}/iti_answers.csv is not a whole CSV table (Error tokenizing data"),
    ("compare_runs", paired_runs_whose_answers_are("cut_short", b"Category,Question,tiny MC2\nc,Q0?,0.5\n"),
     "answer file {root}/iti_answers.csv holds 1 answers, but its fold has 3 test questions; " + REMAKE_ANSWERS),
    ("compare_runs", paired_runs_whose_answers_are("of_another_program", b"Question,x\nQ0?,1\nQ1?,2\nQ2?,3\n"),
     "answer file {root}/iti_answers.csv lacks the column(s) Category, tiny MC2 of the fold's answers"),
    ("compare_runs", paired_runs_whose_answers_are("unscored",
                                                   b"Category,Question,tiny MC2\nc,Q0?,0.5\nc,Q1?,\nc,Q2?,x\n"),
     "answer file {root}/iti_answers.csv lacks a score in some rows of tiny MC2"),
    # options, paths and outputs
    ("validate_2fold", seed_beyond_numpy, "--seed 4294967296 must be at most 4294967295"),
    ("edit_weight", alpha_beyond_float16, "--alpha 1e+300 must be at most 65504"),
    ("validate_2fold", alpha_not_a_number, "--alpha nan is not a number"),
    ("validate_2fold", val_ratio_leaving_no_training_question,
     "8 questions in 2 folds leave a fold 4 development questions, none to train on at --val_ratio 0.99"),
    ("edit_weight", val_ratio_leaving_no_training_question, "--val_ratio 0.99 leaves none of 8 questions to train on"),
    ("edit_weight", one_question_to_split, "--val_ratio 0.2 leaves none of 1 questions to train on"),
    ("validate_2fold", val_ratio_beyond_1_with_a_set_of_its_own, "--val_ratio 1.5 must lie strictly between 0 and 1"),
    ("plot_head_accuracies", val_ratio_leaving_no_probe_to_plot,
     "--val_ratio 0.99 leaves none of 8 questions to train on"),
    ("validate_2fold", select_ratio_leaving_nothing_to_build_on,
     "--select_ratio 0.99 sets aside 4 of the fold's 4 development questions"),
    *[(script, tqa_path_that_is_not_there, "--tqa_path {root}/nowhere does not exist; give an existing folder")
      for script in ("get_activations", "validate_2fold")],
    ("get_activations", gpu_that_torch_does_not_see, "--device cuda:99 names a GPU that torch does not see"),
    ("validate_2fold", empty_model_path, "--model_path is empty; give a path"),
    ("get_activations", empty_folder_option("--features_dir"), "--features_dir is empty; give a path"),
    ("validate_2fold", empty_folder_option("--results_dir"), "--results_dir is empty; give a path"),
    ("get_activations", folder_without_a_model, "--model_path {root}/empty is a folder without config.json"),
    ("validate_2fold", features_dir_in_a_link_loop,
     "--features_dir {root}/features_a cannot be used (Too many levels of symbolic links)"),
    ("validate_2fold", results_dir_a_dangling_link,
     "--results_dir {root}/out is a symbolic link to {root}/gone, which does not exist"),
    ("compare_runs", summary_in_a_link_loop, "summaries {root}/run.json_a cannot be used (Too many levels of symbolic"),
    ("compare_runs", summary_not_there_asked_to_check, "summaries {root}/none.json does not exist; give a file"),
    ("push_hf", push_of_no_folder, "folder {root}/nowhere does not exist; give an existing folder"),
    ("push_hf", push_to_a_bad_repo_id, "--repo_id you/a name is not a valid repository id"),
    ("write_local_text", text_output_a_folder, "--output {root} is a folder, not a file"),
    ("write_local_text", text_output_under_a_file, "{root}/notes.txt is a file, so no folder can be made there"),
    ("write_local_text", text_output_empty, "--output is empty; give a path"),
    ("write_local_text", text_with_no_paragraph_that_long,
     "--min_chars 10000000: no paragraph of the text is that long, so there is nothing to write"),
    ("write_local_text", text_output_of_the_user, "--output {root}/text.txt exists and holds other text; it is kept"),
    ("edit_weight", output_dir_under_a_file, "{root}/notes.txt is a file, so no folder can be made there"),
    ("export_head_shifts", export_output_dir_under_a_file, "{root}/notes.txt is a file, so no folder can be made"),
    ("edit_weight", asked_to_check(earlier_bake_without_overwrite), "holds an earlier bake; add --overwrite"),
    ("export_head_shifts", import_into_a_bake(), "--output_dir {root}/bake is not empty; it is kept"),
    ("export_head_shifts", import_into_a_bake("--overwrite"),
     "--output_dir {root}/bake holds more than head shifts (config.json, model.safetensors); it is kept, whatever"),
    ("get_activations", path_with_a_newline, "--features_dir {root}/a\\nb is a file, not a folder"),
    # issue 33: environment and outputs
    ("get_activations", gguf_cut("in_its_data", 4 * 2**20),
     f"truncated or not a GGUF file: {{root}}/model.gguf has {4 * 2**20} bytes, its tensor table needs"),
    ("validate_2fold", gguf_cut("in_its_header", 1000, "--results_dir", "{root}/out"),
     "truncated or not a GGUF file: {root}/model.gguf ends inside its header; give the whole file (download or "
     "copy it again)"),
    ("get_activations", gguf_cut("in_its_data_asked_to_check", 4 * 2**20, "--check_args"),
     "truncated or not a GGUF file: {root}/model.gguf has"),
    ("get_activations", cache_variable("set_empty", ""),
     "ITI_CACHE is set but empty; set ITI_CACHE to a folder for converted models (it may not exist yet), or unset it "
     "to use ~/.cache/iti"),
    ("validate_2fold", cache_variable("a_file", "{root}/notes.txt", "--results_dir", "{root}/out"),
     "ITI_CACHE {root}/notes.txt is not a folder ({root}/notes.txt is a file); set ITI_CACHE to a folder"),
    ("get_activations", asked_to_check(cache_variable("under_a_file", "{root}/notes.txt/cache")),
     "ITI_CACHE {root}/notes.txt/cache is not a folder ({root}/notes.txt is a file)"),
    ("write_local_text", text_output_a_fifo,
     "--output {root}/pipe is a named pipe (FIFO), not a regular file; it is kept: give the path of a regular file"),
    ("write_local_text", asked_to_check(text_output_a_fifo), "--output {root}/pipe is a named pipe (FIFO)"),
    ("write_local_text", text_output_a_device, "--output {root}/full is a device, not a regular file; it is kept"),
    ("write_local_text", text_output_a_link_leaving_its_folder,
     "--output {root}/out/text.txt is a symbolic link to {root}/elsewhere/text.txt, outside its folder; it is kept"),
    # issue 33: bakes and upload
    ("push_hf", push_with_a_link_to_a_secret, "{root}/baked holds a symbolic link, {root}/baked/passwd -> /etc/passwd; "
                                              "nothing is uploaded from a folder with links"),
    ("push_hf", push_of_changed_weights, "baked model file {root}/baked/model.safetensors is not the file that was "
                                         "written there"),
    ("push_hf", push_of_a_bake_with_a_pipe_for_a_file, "baked model file {root}/baked/tokenizer.json is not a regular "
                                                       "file; bake it again with `python validation/edit_weight.py "
                                                       "--num_heads 1 --output_dir baked --overwrite`"),
    ("push_hf", push_of_a_bake_without_its_record, "{root}/baked holds a baked model but no bake.json"),
    ("push_hf", push_of_a_record_reaching_out, "lists '../../secret.txt', which is no file of the bake's folder"),
    # issue 33: feature content
    *[("validate_2fold", validation_features_with_a_byte_flipped(kind),
       f"features file {{root}}/features/tiny_tqa_mc2_{kind}.npy is not the file that was written there: its SHA-256 ")
      for kind in ("labels", "question_ids")],
    ("validate_2fold", validation_features_with_a_byte_flipped("head_wise"),
     "recorded when it was made (changed or damaged since); " + REMADE_FULL_SET),
    ("edit_weight", edit_features_with_a_label_flipped,
     "tiny_tqa_gen_end_q_limit_4_labels.npy is not the file that was written there"),
    ("plot_head_accuracies", plotted_set_with_an_exponent_flipped,
     "tiny_tqa_mc2_limit_2_head_wise.npy is not the file that was written there"),
    ("get_activations", set_being_extracted_by_another_process,
     "features {root}/features/tiny_tqa_mc2_limit_2_head_wise.npy is being written by another process"),
    # issue 33: pairing
    ("compare_runs", runs_that_do_not_pair("of_two_models", model_path="1b1b1b1b"),
     "ITI (K=8, alpha=5, center_of_mass) and the baseline do not pair, the models differ: 0a0a0a0a against 1b1b1b1b; "
     "compare runs of one model, in one dtype, on the same questions and folds"),
    ("compare_runs", runs_that_do_not_pair("of_two_dtypes", model_path="1b1b1b1b", dtype="torch.float16"),
     "ITI (K=8, alpha=5, center_of_mass) and the baseline do not pair, the models differ: 0a0a0a0a in torch.float32 "
     "against 1b1b1b1b in torch.float16"),
    ("compare_runs", runs_that_do_not_pair("on_other_data", tqa_path="e" * 64),
     "ITI (K=8, alpha=5, center_of_mass) and the baseline do not pair, the data differ: TruthfulQA (dddddddd) "
     "against TruthfulQA (eeeeeeee)"),
    ("compare_runs", runs_that_do_not_pair("in_other_folds", folds=[2, 0, 1]),
     "ITI (K=8, alpha=5, center_of_mass) and the baseline do not pair, the folds differ: fold 0 tests questions "),
    # issue 33: run files
    ("compare_runs", paired_runs_with_a_changed_score,
     "answer file {root}/iti_answers.csv is not the file that was written there: its SHA-256 "),
    ("export_head_shifts", shifts_with_a_flipped_bit,
     "head shifts file {root}/shifts/head_shifts.safetensors is not the file that was written there: its SHA-256 "),
    # issue 29: one-process sweep
    ("validate_2fold", sweep_resumed_without_earlier_runs,
     "--resume: no earlier run of these settings (K 0, alpha 0) in {root}/out; drop --resume to start it"),
    ("validate_2fold", sweep_with_a_kl_budget, "--max_kl 0.5 bounds the KL of the setting each fold chooses, but "
                                               "--sweep chooses none"),
]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("script, make_args, phrase", CASES, ids=[case[1].__name__ for case in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(script, make_args, phrase, tmp_path, tqa_path, monkeypatch,
                                                          capsys):
    root = tmp_path / "work"
    root.mkdir()
    args = make_args(root, tqa_path)
    before = snapshot(root)
    module = load_script(script)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS[script]), *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        module.run_main(module.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and phrase.format(root=root) in lines[0], lines[0]
    assert snapshot(root) == before


@pytest.mark.parametrize("code, advice", [
    (errno.ENOSPC, "free some space there or write elsewhere"),
    (errno.EROFS, "that file system is read-only: write elsewhere"),
    (errno.EACCES, "check its permissions or use another path"),
])
def test_storage_faults_escaping_a_script_are_one_line_and_exit_2(code, advice, capsys):
    from iti.cli import run_main

    def writes_on_a_bad_disk():
        raise OSError(code, os.strerror(code), "/data/out.json")

    with pytest.raises(SystemExit) as exit_info:
        run_main(writes_on_a_bad_disk)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {os.strerror(code)}: /data/out.json; {advice}\n"


def test_other_os_errors_are_not_taken_for_bad_input():
    from iti.cli import run_main

    def loses_the_connection():
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    with pytest.raises(ConnectionResetError):
        run_main(loses_the_connection)
