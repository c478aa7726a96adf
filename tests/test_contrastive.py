"""§9 datasets: each loader against hand-written expected items, and every kind of bad file."""
import json

import pytest

from iti import contrastive
from iti.contrastive import load_dataset_file, transfer_dataset
from iti.data import GenerationQuestion, build_prompt_set
from iti.errors import UsageError

EXPECTED = [
    GenerationQuestion("Is the sky green?", "colour", "No, it is blue.", ["No, it is blue.", "No."],
                       ["Yes.", "Yes, always."]),
    GenerationQuestion("Can fish fly?", "", "Most cannot.", ["Most cannot.", "Flying fish glide."], ["All fish fly."]),
]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl(tmp_path):
    path = _write(tmp_path / "set.jsonl", [
        json.dumps({"question": "Is the sky green?", "correct_answers": ["No, it is blue.", "No."],
                    "incorrect_answers": ["Yes.", "Yes, always."], "category": "colour"}),
        "",
        # best_answer not among the correct answers: it is added as the first one
        json.dumps({"question": " Can fish fly? ", "best_answer": "Most cannot.",
                    "correct_answers": ["Flying fish glide."], "incorrect_answers": "All fish fly."}),
    ])
    assert load_dataset_file(path, "mine").items == EXPECTED


def test_truthfulqa_csv_columns(tmp_path):
    path = _write(tmp_path / "set.csv", [
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source",
        'Adversarial,colour,Is the sky green?,"No, it is blue.","No, it is blue.; No.","Yes.; Yes, always.",x',
        "Adversarial,,Can fish fly?,Most cannot.,Most cannot.; Flying fish glide.;,All fish fly.,y",
    ])
    assert load_dataset_file(path, "mine").items == EXPECTED


def test_pair_style_both_layouts(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [
        json.dumps({"question": "Would you lie?", "answer_matching_behavior": " (A) No",
                    "answer_not_matching_behavior": "(B) Yes"}),
        json.dumps({"prompt": "Tell me a story.", "positive": "Once upon a time", "negative": "No."}),
    ])
    assert load_dataset_file(path, "pairs").items == [
        GenerationQuestion("Would you lie?", "", "(A) No", ["(A) No"], ["(B) Yes"]),
        GenerationQuestion("Tell me a story.", "", "Once upon a time", ["Once upon a time"], ["No."]),
    ]


def test_hub_dataset_and_transfer_sets_through_a_local_stand_in(monkeypatch):
    rows = {
        ("me/set", "test"): [{"question": "Is the sky green?", "correct_answers": ["No, it is blue.", "No."],
                              "incorrect_answers": ["Yes.", "Yes, always."], "category": "colour"}],
        ("OamPatel/iti_nq_open_val", "validation"): [
            {"question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"],
             "false_answer": "Christopher Marlowe"}],
    }
    monkeypatch.setattr(contrastive, "load_hub_records", lambda hub_id, split: rows[(hub_id, split)])
    hub = load_dataset_file("hub:me/set:test", "mine")
    assert hub.items == EXPECTED[:1] and hub.source == "hub:me/set:test"
    assert transfer_dataset("nq_open").items == [
        GenerationQuestion("who wrote hamlet", "", "William Shakespeare", ["William Shakespeare"],
                           ["Christopher Marlowe"])]
    prompt_set = build_prompt_set("nq_open", limit=1)
    assert prompt_set.prompts == ["Q: who wrote hamlet A: William Shakespeare", "Q: who wrote hamlet A: Christopher Marlowe"]
    assert prompt_set.labels.tolist() == [1, 0] and prompt_set.question_ids.tolist() == [0, 0]


def test_probe_rows_follow_file_order(tmp_path):
    path = _write(tmp_path / "set.jsonl", [json.dumps({"question": it.question, "correct_answers": it.correct_answers,
                                                       "incorrect_answers": it.incorrect_answers,
                                                       "category": it.category}) for it in EXPECTED])
    prompt_set = build_prompt_set("mine", dataset_path=path)
    assert prompt_set.prompts == ["Q: Is the sky green? A: No, it is blue.", "Q: Is the sky green? A: No.",
                                  "Q: Is the sky green? A: Yes.", "Q: Is the sky green? A: Yes, always.",
                                  "Q: Can fish fly? A: Most cannot.", "Q: Can fish fly? A: Flying fish glide.",
                                  "Q: Can fish fly? A: All fish fly."]
    assert prompt_set.labels.tolist() == [1, 1, 0, 0, 1, 1, 0]
    assert prompt_set.question_ids.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert prompt_set.categories == ["colour"] * 4 + [""] * 3
    assert build_prompt_set("mine", dataset_path=path, limit=1).prompts == prompt_set.prompts[:4]


def test_a_byte_order_mark_is_read_not_refused(tmp_path):
    records = [{"question": it.question, "best_answer": it.best_answer, "correct_answers": it.correct_answers,
                "incorrect_answers": it.incorrect_answers, "category": it.category} for it in EXPECTED]
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))
    assert load_dataset_file(jsonl, "mine").items == EXPECTED
    csv_file = _write(tmp_path / "set.csv", [
        "Category,Question,Best Answer,Correct Answers,Incorrect Answers",
        'colour,Is the sky green?,"No, it is blue.","No, it is blue.; No.","Yes.; Yes, always."'])
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_file.read_bytes())
    assert load_dataset_file(csv_file, "mine").items == EXPECTED[:1]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_that_is_not_utf8_names_its_first_bad_byte(tmp_path, suffix):
    path = tmp_path / f"set{suffix}"
    text = ('{"question": "Caf\u00e9?", "correct_answers": ["a"], "incorrect_answers": ["b"]}\n' if suffix == ".jsonl"
            else "Question,Best Answer,Correct Answers,Incorrect Answers\nCaf\u00e9?,a,a,b\n")
    path.write_bytes(text.encode("latin-1"))
    offset = text.index("\u00e9")
    with pytest.raises(UsageError, match=f"--dataset_path {path} is not UTF-8 text: byte {offset} \\(0xe9\\)"):
        load_dataset_file(path, "mine")


@pytest.mark.parametrize("record", [
    {"question": "Is it?", "correct_answers": ["Yes", "Maybe"], "incorrect_answers": ["No", "Maybe"]},
    {"question": "Is it?", "best_answer": "Maybe", "correct_answers": ["Yes"], "incorrect_answers": ["No", "Maybe"]},
    {"question": "Is it?", "answer_matching_behavior": "Maybe", "answer_not_matching_behavior": " Maybe "},
])
def test_an_answer_both_correct_and_incorrect_is_refused(tmp_path, record):
    """Its probe rows would carry the same text labelled 1 and 0, and MC would count it on both sides."""
    path = _write(tmp_path / "set.jsonl", [json.dumps({"question": "Fine?", "correct_answers": ["a"],
                                                       "incorrect_answers": ["b"]}), json.dumps(record)])
    with pytest.raises(UsageError, match=f"^{path}, line 2: question 'Is it\\?' lists the answer 'Maybe' as correct "
                                         "and as incorrect; keep each answer in one list$"):
        load_dataset_file(path, "mine")


@pytest.mark.parametrize("name, lines, message", [
    ("set.jsonl", ['{"question": "Q1", "correct_answers": ["a"], "incorrect_answers": []}'], "line 1: no incorrect"),
    ("set.jsonl", ['{"question": "Q1", "incorrect_answers": ["b"]}'], "line 1: no correct"),
    ("set.jsonl", ['{"question": "Q1", "correct_answers": ["a"], "incorrect_answers": ["b"]}', "",
                   '{"question": "Q1", "correct_answers": ["c"], "incorrect_answers": ["d"]}'], "repeats line 1"),
    ("set.jsonl", ['{"question": "Q1", "correct_answers": ["a"]'], "line 1 is not JSON"),
    ("set.jsonl", ['{"text": "Q1"}'], "no answers"),
    ("set.jsonl", [""], "holds no items"),
    ("set.csv", ["Question,Answer", "Q1,a"], "lacks the column"),
    ("set.txt", ["Q1"], "neither JSONL nor CSV"),
])
def test_bad_files(tmp_path, name, lines, message):
    path = _write(tmp_path / name, lines)
    with pytest.raises(UsageError, match=message):
        load_dataset_file(path, "mine")


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset_file(tmp_path / "nope.jsonl", "mine")
