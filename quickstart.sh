#!/usr/bin/env bash
# The main job on the embedded default: the bundled SmolLM2-135M-Instruct, the first 40 TruthfulQA
# questions, CPU: activations, 2-fold ITI validation (MC, CE, KL) and the unshifted baseline on the
# same folds, ending with a table of both. Installs first. CE and KL read 20 documents here, not the
# 100 of docs/method.md §6 (OWT_SAMPLES=100 for those; slower, less noisy).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-smollm2_135M_instruct}
LIMIT=${LIMIT:-40}
OWT_SAMPLES=${OWT_SAMPLES:-20}
TEXT=features/python_reference_text.txt
# Threads: the cores other work leaves free (at least one), unless OMP_NUM_THREADS is set. Where other work
# keeps the cores busy, OpenMP threads spin-wait for each other (a bundled-model test took 196 s with two
# threads, 18 s with one, on a loaded 2-core machine); on idle cores a second thread saves time.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$("$PYTHON" -c 'import os; print(max(1, os.cpu_count() - round(os.getloadavg()[0])))')}
LOGS=$(mktemp -d)
BASELINE_PID=
trap 'if [ -n "$BASELINE_PID" ]; then kill "$BASELINE_PID" 2>/dev/null || true; fi; rm -rf "$LOGS"' EXIT
step() { echo "==> [$1/6] $2 ($(date +%T))"; }

step 1 "install (setup.sh): torch if missing, this package, the bundled model"
bash setup.sh
step 2 "activations of tqa_mc2 (the probes' training set) and tqa_gen_end_q (sets the spread of each shift), first $LIMIT questions"
"$PYTHON" get_activations/get_activations.py --model_name "$MODEL" --dataset_name tqa_mc2 tqa_gen_end_q \
  --limit "$LIMIT" --device cpu
step 3 "text for CE and KL: real prose that ships with Python (no hub here, so no OpenWebText)"
"$PYTHON" validation/write_local_text.py --output "$TEXT"
VALIDATE=(validation/validate_2fold.py --model_name "$MODEL" --use_center_of_mass --alpha 5 --limit "$LIMIT"
          --metrics mc ce kl --owt_path "$TEXT" --owt_samples "$OWT_SAMPLES" --device cpu)
# The two validations are independent: they run side by side, the threads shared between them.
THREADS=$OMP_NUM_THREADS
step 4 "ITI, 2 folds: 8 heads, alpha 5, center-of-mass directions; MC, CE and KL ($OWT_SAMPLES documents); the baseline runs beside it"
OMP_NUM_THREADS=$(( THREADS > 1 ? THREADS / 2 : 1 )) "$PYTHON" "${VALIDATE[@]}" --num_heads 0 > "$LOGS/baseline.log" 2>&1 &
BASELINE_PID=$!
OMP_NUM_THREADS=$(( THREADS - THREADS / 2 )) "$PYTHON" "${VALIDATE[@]}" --num_heads 8 | tee "$LOGS/iti.log"
step 5 "baseline: the unshifted model on the same folds and documents (its output, from beside step 4)"
wait "$BASELINE_PID" || { cat "$LOGS/baseline.log"; exit 1; }
BASELINE_PID=
cat "$LOGS/baseline.log"
step 6 "baseline and ITI side by side (means over the 2 folds)"
"$PYTHON" validation/compare_runs.py "$(sed -n 's/^results: //p' "$LOGS/baseline.log")" \
  "$(sed -n 's/^results: //p' "$LOGS/iti.log")"
