"""Head shifts to and from pyvene's saved format (IntervenableModel.save / .load).

Export: a head-shift folder (validate_2fold's results_dump/head_shifts_dump/..., or an edit_weight
folder) becomes a folder that `pyvene.IntervenableModel.load(folder, model)` alone applies to the model
(config.json + one tensor state file per edited layer, plus the head shifts themselves). The model is
the one the head shifts record (their model_source) unless --model_path names another, which must
have the same geometry and, without --allow_other_model, be that same model; --model_name is used
only for shifts that record no model. Import: such a folder (or one pyvene wrote) back into head
shifts, for the model its head shifts record or the one --model_path / --model_name names.
--format lm_eval exports instead an lm-evaluation-harness steer file (steer.pt: per edited layer, W_o·δ added to
o_proj's output, which equals the baked model) with a README holding the `lm_eval --model steered` command.

python validation/export_head_shifts.py --head_shifts validation/results_dump/head_shifts_dump/RUN_fold_0_com \\
    --output_dir exported/RUN_fold_0
python validation/export_head_shifts.py --head_shifts validation/results_dump/head_shifts_dump/RUN_fold_0_com \\
    --format lm_eval --output_dir exported/RUN_fold_0_lm_eval
python validation/export_head_shifts.py --import_from exported/RUN_fold_0 --output_dir imported/RUN_fold_0
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import ExportConfig  # noqa: E402


def main() -> None:
    cfg = parse_config(ExportConfig, description=__doc__)

    from iti.geometry import head_geometry
    from iti.head_shifts import HeadShifts
    from iti.models import gguf_to_folder, load_config
    from iti.pyvene_export import export_pyvene, import_pyvene, model_source
    from iti.report import report_table

    shifts = HeadShifts.load(cfg.head_shifts) if cfg.head_shifts is not None else None
    source = model_source(cfg, shifts)
    folder = str(gguf_to_folder(source)) if source.endswith(".gguf") else source
    model_config = load_config(folder, cfg.trust_remote_code)
    geometry = head_geometry(model_config)
    if shifts is None:
        shifts = import_pyvene(cfg.import_from, geometry)
        shifts.check_model(source, cfg.allow_other_model)
        shifts.save(cfg.output_dir)
        print(f"imported {shifts.k} head shifts (alpha {shifts.alpha:g}) from {cfg.import_from} -> {cfg.output_dir}")
        return
    shifts.check_model(source, cfg.allow_other_model)
    shifts.check_geometry(geometry)
    layers = len(set(shifts.layers.tolist()))
    if cfg.format == "lm_eval":
        from iti.lm_eval_steer import STEER_FILE, export_lm_eval, lm_eval_command
        from iti.models import load_model

        model, _ = load_model(folder, cfg.device, cfg.dtype, cfg.trust_remote_code)
        out = export_lm_eval(shifts, model, folder, cfg.output_dir)
        print(f"exported {shifts.k} head shifts over {layers} layers of {source} -> {out / STEER_FILE}; evaluate with "
              f"{lm_eval_command(folder, (out / STEER_FILE).resolve())}")
    else:
        out = export_pyvene(shifts, model_config, cfg.output_dir)
        print(f"exported {shifts.k} head shifts over {layers} layers of {source} -> {out}; "
              f"apply with pyvene.IntervenableModel.load({str(out)!r}, model)")
    report = shifts.provenance.probe_report
    if report:
        print(report_table([report], shifts.alpha, shifts.k))


if __name__ == "__main__":
    run_main(main)
