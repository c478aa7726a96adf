"""iti.records: typed dataclasses read from JSON, every mistyped field named, round trips exact."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from iti.errors import UsageError
from iti.records import read_record, record_json


@dataclass
class Inner:
    name: str
    score: float | None = None


@dataclass
class Outer:
    count: int
    inner: Inner
    rows: list[Inner] = field(default_factory=list)
    table: dict[str, float] = field(default_factory=dict)
    flag: bool = False
    anything: object | None = None


@dataclass
class Open:
    version: int
    other: dict = field(default_factory=dict)


def read(values, cls=Outer):
    return read_record(cls, values, "test record", "write it again")


def test_round_trip_builds_nested_records_and_gives_back_the_same_json():
    values = {"count": 3, "inner": {"name": "a", "score": 1}, "rows": [{"name": "b", "score": None}],
              "table": {"x": 0.5, "y": 2}, "flag": True, "anything": None}
    record = read(json.loads(json.dumps(values)))
    assert record.inner == Inner("a", 1) and record.rows == [Inner("b", None)]
    assert record_json(record) == values


@pytest.mark.parametrize("values, phrase", [
    ([], "the record is a JSON list, not an object"),
    ({"inner": {"name": "a"}}, "count is missing"),
    ({"count": True, "inner": {"name": "a"}}, "count is a JSON boolean, not a whole number"),
    ({"count": 1.5, "inner": {"name": "a"}}, "count is a JSON number, not a whole number"),
    ({"count": 1, "inner": []}, "inner is a JSON list, not an object"),
    ({"count": 1, "inner": {"name": 3}}, "inner.name is a JSON number, not a string"),
    ({"count": 1, "inner": {"name": "a", "score": "1"}}, "inner.score is a JSON string, not a number"),
    ({"count": 1, "inner": {"name": "a"}, "rows": [{"name": "b"}, {}]}, "rows[1].name is missing"),
    ({"count": 1, "inner": {"name": "a"}, "table": {"x": None}}, "table.x is a JSON null, not a number"),
    ({"count": 1, "inner": {"name": "a"}, "surprise": 1}, "surprise is not a field of this record"),
])
def test_a_value_that_does_not_fit_is_named_in_one_line(values, phrase):
    with pytest.raises(UsageError) as caught:
        read(values)
    assert str(caught.value) == f"test record: {phrase}; write it again"


def test_undeclared_keys_are_kept_where_the_record_has_room_for_them():
    record = read({"version": 2, "later": [1, 2]}, Open)
    assert record.other == {"later": [1, 2]}
    assert record_json(record) == {"version": 2, "later": [1, 2]}
