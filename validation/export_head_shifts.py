"""Head shifts to and from pyvene's saved format (IntervenableModel.save / .load).

Export: a head-shift folder (validate_2fold's results_dump/head_shifts_dump/..., or an edit_weight
folder) becomes a folder that `pyvene.IntervenableModel.load(folder, model)` alone applies to the model
(config.json + one tensor state file per edited layer, plus the head shifts themselves). The shifts
must have been made for this model (--model_name / --model_path); --allow_other_model overrides the
name check, never the geometry. Import: such a folder (or one pyvene wrote) back into head shifts.

python validation/export_head_shifts.py --head_shifts validation/results_dump/head_shifts_dump/RUN_fold_0_com \\
    --output_dir exported/RUN_fold_0
python validation/export_head_shifts.py --import_from exported/RUN_fold_0 --output_dir imported/RUN_fold_0
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import ExportConfig  # noqa: E402


def main() -> None:
    cfg = parse_config(ExportConfig, description=__doc__)

    from transformers import AutoConfig

    from iti.head_shifts import HeadShifts
    from iti.models import gguf_to_folder, head_geometry, resolve_model_source
    from iti.pyvene_export import export_pyvene, import_pyvene
    from iti.report import report_table

    source = resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path)
    folder = str(gguf_to_folder(source)) if source.endswith(".gguf") else source
    model_config = AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    geometry = head_geometry(model_config)
    if cfg.import_from is not None:
        shifts = import_pyvene(cfg.import_from, geometry)
        shifts.check_model(source, cfg.allow_other_model)
        shifts.save(cfg.output_dir)
        print(f"imported {shifts.k} head shifts (alpha {shifts.alpha:g}) from {cfg.import_from} -> {cfg.output_dir}")
        return
    shifts = HeadShifts.load(cfg.head_shifts)
    shifts.check_model(source, cfg.allow_other_model)
    shifts.check_geometry(geometry.num_layers, geometry.num_heads, geometry.head_dim)
    out = export_pyvene(shifts, model_config, cfg.output_dir)
    print(f"exported {shifts.k} head shifts over {len(set(shifts.layers.tolist()))} layers -> {out}; apply with "
          f"pyvene.IntervenableModel.load({str(out)!r}, model)")
    report = shifts.provenance.get("probe_report")
    if report:
        print(report_table([report], shifts.alpha, shifts.k))


if __name__ == "__main__":
    run_main(main)
