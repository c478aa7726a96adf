"""HeadShifts: offsets against a hand loop, files, validation."""
from __future__ import annotations

import hashlib
import json
import re
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file

from iti.errors import UsageError
from iti.head_shifts import METADATA_FILE, REMAKE, TENSORS_FILE, HeadShifts
from iti.options import check_alpha
from iti.geometry import HeadGeometry
from tests.conftest import flip_bit, make_shifts, make_tiny_model, tensor_offset

L, H, D = 4, 3, 8
GEOMETRY = HeadGeometry(num_layers=L, num_heads=H, head_dim=D, num_kv_heads=H, hidden_size=H * D)
PAIRS = [(2, 1), (0, 0), (2, 0), (3, 2), (1, 1)]


def example_shifts(k: int = 4, seed: int = 0, **fields) -> HeadShifts:
    """The first k of PAIRS on a 4×3×8 model, α = 15, with a provenance; `fields` replace any field."""
    provenance = {"model": "tiny", "datasets": ["tqa_mc2", "tqa_gen_end_q"], "seed": 42, "fold": 0}
    return make_shifts(GEOMETRY, PAIRS[:k], seed=seed, **{"alpha": 15.0, "provenance": provenance, **fields})


def test_layer_offsets_match_a_hand_loop():
    shifts = example_shifts()
    offsets = shifts.layer_offsets()
    assert sorted(offsets) == [0, 2, 3]
    for layer in range(L):
        expected = np.zeros(H * D)
        for i in range(shifts.k):
            if shifts.layers[i] == layer:
                h = shifts.heads[i]
                expected[h * D:(h + 1) * D] += shifts.alpha * shifts.sigmas[i] * shifts.directions[i].astype(np.float64)
        if layer in offsets:
            assert offsets[layer].dtype == np.float32 and offsets[layer].shape == (H * D,)
            np.testing.assert_allclose(offsets[layer], expected, rtol=1e-6, atol=1e-6)
        else:
            assert not expected.any()


def test_scaled_copies_with_new_alpha():
    shifts = example_shifts()
    half = shifts.scaled(7.5)
    assert half.alpha == 7.5 and shifts.alpha == 15.0
    for layer, offset in shifts.layer_offsets().items():
        np.testing.assert_allclose(half.layer_offsets()[layer], offset / 2, rtol=1e-6)
    half.directions[0, 0] = 99.0
    half.provenance.seed = 0
    assert shifts.directions[0, 0] != 99.0 and shifts.provenance.seed == 42


def assert_identical(a: HeadShifts, b: HeadShifts) -> None:
    for name in ("layers", "heads", "directions", "sigmas", "probe_accuracies"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
    assert (a.alpha, a.num_layers, a.num_heads, a.head_dim, a.provenance) == \
           (b.alpha, b.num_layers, b.num_heads, b.head_dim, b.provenance)


@pytest.mark.parametrize("k", [4, 0])
def test_save_load_round_trip_is_bit_identical(tmp_path, k):
    shifts = example_shifts(k=k, alpha=0.1 + 0.2)  # an alpha whose decimal form is long
    shifts.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [METADATA_FILE, TENSORS_FILE]
    for where in ("out", f"out/{TENSORS_FILE}", f"out/{METADATA_FILE}"):
        assert_identical(HeadShifts.load(tmp_path / where), shifts)


def test_files_are_safetensors_and_json_without_pickle(tmp_path):
    """The tensor file parses as safetensors (8-byte header length, JSON header, raw data): no pickle."""
    example_shifts().save(tmp_path)
    raw = (tmp_path / TENSORS_FILE).read_bytes()
    header_length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_length])
    assert header["directions"]["dtype"] == "F32" and header["directions"]["shape"] == [4, D]
    assert set(load_file(str(tmp_path / TENSORS_FILE))) == {"layers", "heads", "directions", "sigmas",
                                                            "probe_accuracies"}
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert meta["alpha"] == 15.0 and meta["heads"] == [[2, 1], [0, 0], [2, 0], [3, 2]]
    assert (meta["num_layers"], meta["num_heads"], meta["head_dim"]) == (L, H, D)


def test_save_overwrites_and_mixed_saves_are_refused(tmp_path):
    example_shifts(seed=0).save(tmp_path / "a")
    example_shifts(seed=1).save(tmp_path / "a")
    assert_identical(HeadShifts.load(tmp_path / "a"), example_shifts(seed=1))
    example_shifts(seed=2).save(tmp_path / "b")
    (tmp_path / "a" / METADATA_FILE).write_text((tmp_path / "b" / METADATA_FILE).read_text())
    with pytest.raises(UsageError, match=f"{tmp_path / 'a' / TENSORS_FILE} is not the file that was written there"):
        HeadShifts.load(tmp_path / "a")
    # Without the digest (folders saved before it was recorded), the save id still tells the pair apart.
    without_digest(tmp_path / "a")
    with pytest.raises(UsageError, match="different saves"):
        HeadShifts.load(tmp_path / "a")


def without_digest(folder) -> None:
    """The folder as versions before the tensors file's digest was recorded saved it."""
    meta = json.loads((folder / METADATA_FILE).read_text())
    del meta["tensors_sha256"]
    (folder / METADATA_FILE).write_text(json.dumps(meta))


def test_save_records_the_digest_of_the_tensors_file(tmp_path):
    example_shifts().save(tmp_path)
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert meta["tensors_sha256"] == hashlib.sha256((tmp_path / TENSORS_FILE).read_bytes()).hexdigest()


def test_a_flipped_bit_in_the_tensors_file_is_refused_by_every_reader(tmp_path):
    """The lowest bit of a probe accuracy: a file that still parses, with a value off by 1e-16, is refused by the
    loader and iti.apply with a folder (export_head_shifts: tests/test_cli_errors.py), naming the file and what
    remakes it."""
    import iti

    shifts = example_shifts()
    shifts.save(tmp_path)
    path = tmp_path / TENSORS_FILE
    flip_bit(path, tensor_offset(path, "probe_accuracies"))
    message = f"^head shifts file {path} is not the file that was written there: .*; {re.escape(REMAKE)}$"
    with pytest.raises(UsageError, match=message):
        HeadShifts.load(tmp_path)
    with pytest.raises(UsageError, match=message):
        iti.apply(make_tiny_model("llama", 32), tmp_path)
    # A folder saved before digests were recorded is read as it is.
    without_digest(tmp_path)
    assert HeadShifts.load(tmp_path).probe_accuracies[0] != shifts.probe_accuracies[0]


def test_load_errors(tmp_path):
    with pytest.raises(UsageError, match="no head shifts"):
        HeadShifts.load(tmp_path / "missing")
    example_shifts().save(tmp_path)
    (tmp_path / METADATA_FILE).write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        HeadShifts.load(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta.pop("alpha"), "alpha is missing"),
    (lambda meta: [meta.pop("num_layers"), meta.pop("heads")], "num_layers is missing"),
    (lambda meta: meta.update(num_heads="4"), "num_heads is a JSON string, not a whole number"),
    (lambda meta: meta.update(alpha=None, provenance=[]), "alpha is a JSON null, not a number"),
    (lambda meta: meta.update(provenance=[]), "provenance is a JSON list, not an object"),
    (lambda meta: meta.update(heads=[[0, "1"]]), r"heads\[0\]\[1\] is a JSON string, not a whole number"),
    (lambda meta: meta["provenance"].update(seed=4.5), "provenance.seed is a JSON number, not a whole number"),
    (lambda meta: meta.update(head_dim=True), "head_dim is a JSON boolean, not a whole number"),
    (lambda meta: meta.update(saved_by="me"), "saved_by is not a field of this record"),
    (lambda meta: meta.pop("format"), "does not hold iti head shifts"),
])
def test_head_shifts_json_with_keys_missing_or_mistyped_is_named(tmp_path, edit, message):
    example_shifts().save(tmp_path)
    path = tmp_path / METADATA_FILE
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(UsageError, match=f"^{path}:? .*{message}.*; save the head shifts again$"):
        HeadShifts.load(tmp_path)


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b'"head shifts"', b"\xff\xfe{}"])
def test_foreign_head_shifts_json_is_named(tmp_path, content):
    example_shifts().save(tmp_path)
    (tmp_path / METADATA_FILE).write_bytes(content)
    with pytest.raises(UsageError, match=f"{tmp_path / METADATA_FILE}.*save the head shifts again"):
        HeadShifts.load(tmp_path)


def test_head_shifts_json_with_a_byte_order_mark_loads(tmp_path):
    example_shifts(seed=3).save(tmp_path)
    path = tmp_path / METADATA_FILE
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert_identical(HeadShifts.load(tmp_path), example_shifts(seed=3))


def test_a_damaged_tensors_file_is_named(tmp_path):
    example_shifts().save(tmp_path)
    path = tmp_path / TENSORS_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UsageError, match=f"{path} is not the file that was written there"):
        HeadShifts.load(tmp_path)
    without_digest(tmp_path)
    with pytest.raises(UsageError, match=f"{path} is not a readable safetensors file"):
        HeadShifts.load(tmp_path)


@pytest.mark.parametrize("overrides", [
    dict(directions=np.ones((4, D))),                       # not unit length
    dict(directions=np.eye(D)[:4, :D - 1]),                 # wrong head_dim
    dict(sigmas=[1.0, 1.0, 1.0]),                           # K mismatch
    dict(sigmas=[1.0, -1.0, 1.0, 1.0]),                     # negative spread
    dict(heads=[1, 0, 0, 3]),                               # head 3 >= num_heads
    dict(layers=[2, 0, 2, 4]),                              # layer 4 >= num_layers
    dict(heads=[1, 0, 1, 2]),                               # (2, 1) listed twice
    dict(alpha=float("nan")),
    dict(provenance={"when": object()}),                    # not JSON
])
def test_bad_head_shifts_raise_usage_error(overrides):
    with pytest.raises(UsageError):
        example_shifts(**overrides)


@pytest.mark.parametrize("alpha, accepted", [(65504.0, True), (-65504.0, True), (65504.5, False),
                                             (float("-inf"), False), (float("nan"), False)])
def test_alpha_has_one_range_for_the_options_and_the_head_shifts(alpha, accepted):
    def accepts(check) -> bool:
        try:
            check()
        except UsageError:
            return False
        return True
    assert [accepts(lambda: check_alpha(alpha)), accepts(lambda: example_shifts(alpha=alpha))] == [accepted] * 2


def test_shifts_beyond_float32_are_refused_and_those_within_kept():
    """The largest shift α·σ·θ_i against float32's largest number, from σ chosen to land 4/3 of it or 2/3."""
    largest = float(np.finfo(np.float32).max)
    one = example_shifts(k=1, alpha=1.0)
    reach = float(np.abs(one.sigmas[0] * one.directions[0].astype(np.float64)).max())
    sigma = one.sigmas[0] * largest / reach / 1.5
    assert example_shifts(k=1, alpha=1.0, sigmas=[sigma]).k == 1
    with pytest.raises(UsageError, match=r"head shift alpha 2 shifts a head by up to 4\.5\d*e\+38 .* beyond the "
                                         r"largest float32 number"):
        example_shifts(k=1, alpha=2.0, sigmas=[sigma])


def test_check_geometry_names_both_geometries():
    shifts = example_shifts()
    assert shifts.geometry == GEOMETRY
    shifts.check_geometry(GEOMETRY)
    with pytest.raises(UsageError, match=r"made for 4×3×8 .* model has 4×3×16"):
        shifts.check_geometry(HeadGeometry(L, H, 16))


def test_shifts_refuse_another_model_unless_told(tmp_path):
    shifts = example_shifts(provenance={"model_source": "org/model-a"})
    shifts.check_model("org/model-a/")
    with pytest.raises(UsageError, match="made for org/model-a, not org/model-b"):
        shifts.check_model("org/model-b")
    shifts.check_model("org/model-b", allow_other_model=True)
    folder = tmp_path / "model"
    folder.mkdir()
    local = example_shifts(provenance={"model_source": str(folder)})
    local.check_model(str(tmp_path / "." / "model"))
    assert HeadShifts.load(local.save(tmp_path / "shifts")).model_source == str(folder)


@pytest.mark.parametrize("path", [5, ["shifts"], None])
def test_load_and_save_take_only_a_path(tmp_path, path):
    shifts = example_shifts(k=1)
    with pytest.raises(UsageError, match=rf"^HeadShifts.load takes a folder's path .*, not {type(path).__name__} "):
        HeadShifts.load(path)
    with pytest.raises(UsageError, match=rf"^HeadShifts.save takes a folder's path .*, not {type(path).__name__} "):
        shifts.save(path)
    assert list(tmp_path.iterdir()) == []
