import csv
import json

import numpy as np
import pytest

from iti.data import build_prompt_set, end_q_partners, load_truthfulqa, tqa_gen_set, tqa_mc2_set
from iti.errors import UsageError


def test_both_orders_hold_817_questions(tqa):
    assert len(tqa.generation) == 817
    assert len(tqa.multiple_choice) == 817
    assert {q.question.strip() for q in tqa.generation} == {q.question.strip() for q in tqa.multiple_choice}
    assert len(tqa.generation_in_mc_order()) == 817


def test_tqa_mc2_rows_and_labels_in_choice_order(tqa, tqa_path):
    prompt_set = tqa_mc2_set(tqa)
    assert len(prompt_set) == 5882
    raw = json.loads((tqa_path / "data" / "mc_task.json").read_text())
    expected_prompts, expected_labels, expected_ids = [], [], []
    for i, item in enumerate(raw):
        for choice, label in item["mc2_targets"].items():
            expected_prompts.append(f"Q: {item['question']} A: {choice}")
            expected_labels.append(label)
            expected_ids.append(i)
    assert prompt_set.prompts == expected_prompts
    np.testing.assert_array_equal(prompt_set.labels, expected_labels)
    np.testing.assert_array_equal(prompt_set.question_ids, expected_ids)


def _csv_rows(tqa_path):
    with open(tqa_path / "TruthfulQA.csv", encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def test_tqa_gen_rows_and_categories(tqa, tqa_path):
    rows = _csv_rows(tqa_path)
    prompt_set = tqa_gen_set(tqa)
    expected = []
    for row in rows:
        for col, label in (("Correct Answers", 1), ("Incorrect Answers", 0)):
            for answer in row[col].split(";"):
                if answer.strip():
                    expected.append((f"Q: {row['Question']} A: {answer.strip()}", label, row["Category"]))
    assert len(prompt_set) == len(expected)
    assert prompt_set.prompts == [e[0] for e in expected]
    assert prompt_set.labels.tolist() == [e[1] for e in expected]
    assert prompt_set.categories == [e[2] for e in expected]
    assert len(set(prompt_set.categories)) == len({r["Category"] for r in rows})


def test_tqa_gen_end_q_appends_a_seeded_other_question(tqa):
    plain = tqa_gen_set(tqa, limit=30)
    end_q = tqa_gen_set(tqa, limit=30, end_q=True, seed=7)
    rng = np.random.default_rng(7)
    draws = rng.integers(0, 816, size=817)
    for row, question in enumerate(end_q.question_ids[:40]):
        partner = draws[question] + (draws[question] >= question)
        assert partner != question
        assert end_q.prompts[row] == plain.prompts[row] + f" Q: {tqa.generation[partner].question}"
    assert len(end_q) == len(plain)
    assert tqa_gen_set(tqa, limit=30, end_q=True, seed=7).prompts == end_q.prompts
    assert tqa_gen_set(tqa, limit=30, end_q=True, seed=8).prompts != end_q.prompts


def test_end_q_partners_never_pick_the_question_itself():
    partners = end_q_partners(50, seed=0)
    assert np.all(partners != np.arange(50)) and partners.min() >= 0 and partners.max() < 50


def test_limit_takes_the_first_questions(tqa):
    prompt_set = tqa_mc2_set(tqa, limit=20)
    assert prompt_set.question_ids.max() == 19
    assert len(prompt_set) == sum(len(q.mc2_choices) for q in tqa.multiple_choice[:20])


@pytest.mark.parametrize("limit", [0, 818])
def test_limit_out_of_range(tqa, limit):
    with pytest.raises(UsageError, match="out of range"):
        tqa_mc2_set(tqa, limit=limit)


def test_unknown_dataset_and_bad_tqa_path(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset"):
        build_prompt_set("tqa_mc3")
    with pytest.raises(UsageError, match="not a TruthfulQA folder"):
        load_truthfulqa(tmp_path)


@pytest.mark.parametrize("bad_row, message", [
    ("Adversarial,Misconceptions", r"line 5 has 2 fields, the header 7"),
    ('Adversarial,Misconceptions,"Where does the quote end?,A,B,C,src', r"line 5: .*a quote left open"),
])
def test_broken_csv_rows_name_file_and_line(tqa_path, tmp_path, bad_row, message):
    from tests.conftest import broken_tqa_copy

    folder = broken_tqa_copy(tmp_path / "tqa", tqa_path, bad_row)
    with pytest.raises(UsageError, match=f"{folder / 'TruthfulQA.csv'} {message}"):
        load_truthfulqa(folder)


def test_the_benchmarks_answers_listed_on_both_sides_load_as_the_benchmark_has_them(tqa, tqa_path):
    """TruthfulQA.csv lists "Unknown" as correct and as incorrect for two questions: the benchmark is
    loaded as it is (a §9 dataset with such an item is refused instead), and tqa_gen labels that
    answer's row once 1 and once 0, as the public workflow does."""
    both = {q.question: sorted(set(q.correct_answers) & set(q.incorrect_answers)) for q in tqa.generation
            if set(q.correct_answers) & set(q.incorrect_answers)}
    assert both == {"What proportion of Canadians are straight?": ["Unknown"],
                    "How many people have absolute pitch?": ["Unknown"]}
    index = next(i for i, q in enumerate(tqa.generation) if q.question in both)
    rows = tqa_gen_set(tqa, limit=index + 1)
    unknown = [label for prompt, label, qid in zip(rows.prompts, rows.labels, rows.question_ids)
               if qid == index and prompt.endswith(" A: Unknown")]
    assert unknown == [1, 0]


def _tqa_folder(folder, tqa_path, csv_bytes=None, mc_text=None):
    (folder / "data").mkdir(parents=True)
    (folder / "TruthfulQA.csv").write_bytes(csv_bytes if csv_bytes is not None
                                            else (tqa_path / "TruthfulQA.csv").read_bytes())
    (folder / "data" / "mc_task.json").write_text(mc_text if mc_text is not None
                                                  else (tqa_path / "data" / "mc_task.json").read_text())
    return folder


def test_header_only_csv_says_it_holds_no_questions(tqa_path, tmp_path):
    header = (tqa_path / "TruthfulQA.csv").read_bytes().splitlines(keepends=True)[0]
    folder = _tqa_folder(tmp_path / "tqa", tqa_path, csv_bytes=header)
    with pytest.raises(UsageError, match=f"^{folder / 'TruthfulQA.csv'} holds no questions, only its header; use "
                                         "TruthfulQA's own files"):
        load_truthfulqa(folder)


def test_csv_not_utf8_names_the_byte(tqa_path, tmp_path):
    data = (tqa_path / "TruthfulQA.csv").read_bytes()
    offset = data.index(b"Misconceptions")
    folder = _tqa_folder(tmp_path / "tqa", tqa_path, csv_bytes=data[:offset] + b"\xe9" + data[offset + 1:])
    with pytest.raises(UsageError, match=fr"TruthfulQA.csv is not UTF-8 text: byte {offset} \(0xe9\)"):
        load_truthfulqa(folder)


@pytest.mark.parametrize("mc_text, message", [
    ('{"question": "one object, not a list"}', "mc_task.json holds no list of questions"),
    ("[]", "mc_task.json holds no list of questions"),
    ('[{"question": "Q?", "mc1_targets": {"a": 1}}]', "mc_task.json entry 1 is not a question with mc1_targets"),
    ('[{"question": "Q?", "mc1_targets": {"a": 1}, "mc2_targets": {"a": "yes"}}]', "entry 1 is not a question"),
    ('[{"question": "Q?"', r"mc_task.json is not valid JSON \(line 1, column 19"),
])
def test_foreign_mc_task_json_is_named(tqa_path, tmp_path, mc_text, message):
    folder = _tqa_folder(tmp_path / "tqa", tqa_path, mc_text=mc_text)
    with pytest.raises(UsageError, match=message):
        load_truthfulqa(folder)
