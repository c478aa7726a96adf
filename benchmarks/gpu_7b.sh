#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md at LLaMA-2-7B geometry, with random float16 weights
# (7B weights cannot be fetched; speed does not depend on their values):
#   1. get_activations of all 5,882 tqa_mc2 rows (and tqa_gen_end_q, which validate_2fold needs for σ);
#   2. one full 2-fold validate_2fold: MC, 817 generations of 50 tokens, both judges (the random
#      model again), CE/KL on 100 samples of local text;
#   3. bench_pipeline.py stage by stage, with peak memory;
#   4. its sweep and selection stages on the saved model: a 4 x 5 grid of (K, alpha) as a validate_2fold process
#      per cell against one validate_2fold --sweep (MC on SWEEP_QUESTIONS questions, 2 folds), and a selection
#      grid setting by setting against one evaluate_settings call (MC and KL on BENCH_QUESTIONS questions).
# Usage: bash benchmarks/gpu_7b.sh    (WORK=/path with ~30 GB free; DEVICE=cuda:1 to pick a GPU;
#        smoke test on a CPU, one layer, 4 questions, no CE/KL: DEVICE=cpu RANDOM_LAYERS=1 LIMIT=4
#        BENCH_QUESTIONS=2 EXTRA="--limit 4 --max_new_tokens 4 --num_heads 8 --metrics mc judge info"
#        OUTPUT=/tmp/smoke.json GRID_OUTPUT=/tmp/smoke_grids.json SWEEP_QUESTIONS=4 GRID_K=1,2 GRID_ALPHA=0,5)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/tmp/iti_gpu_7b}
device=${DEVICE:-cuda}
model="$work/random_llama2_7b"
mkdir -p "$work" benchmarks/results
[ -d "$model" ] || python benchmarks/bench_pipeline.py --save_random_llama2_7b "$model" ${RANDOM_LAYERS:+--random_layers "$RANDOM_LAYERS"}
[ -f "$work/local_text.txt" ] || python validation/write_local_text.py --output "$work/local_text.txt"

stamp() { date +%s.%N; }
seconds_since() { python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(stamp)"; }

for dataset in $(python -m iti.registry datasets --validation); do
  began=$(stamp)
  python get_activations/get_activations.py --model_name random_llama2_7b --model_path "$model" \
    --dataset_name "$dataset" --device "$device" --features_dir "$work/features" ${LIMIT:+--limit "$LIMIT"}
  echo "get_activations $dataset: $(seconds_since "$began") s"
done

began=$(stamp)
python validation/validate_2fold.py --model_name random_llama2_7b --model_path "$model" --device "$device" \
  --num_heads 48 --alpha 15 --judge_model "$model" --info_model "$model" --owt_path "$work/local_text.txt" \
  --features_dir "$work/features" --results_dir "$work/results" ${EXTRA:-}
echo "validate_2fold: $(seconds_since "$began") s"

python benchmarks/bench_pipeline.py --device "$device" --random_llama2_7b ${RANDOM_LAYERS:+--random_layers "$RANDOM_LAYERS"} \
  --num_questions "${BENCH_QUESTIONS:-20}" --memory ${LIMIT:+--memory_limit "$LIMIT"} --output "${OUTPUT:-benchmarks/results/gpu_llama2_7b.json}"

python benchmarks/bench_pipeline.py --device "$device" --model_name random_llama2_7b --model_path "$model" \
  --stages sweep,selection --grid_k "${GRID_K:-16,32,48,64}" --grid_alpha "${GRID_ALPHA:-0,5,10,15,20}" \
  --sweep_questions "${SWEEP_QUESTIONS:-40}" --num_questions "${BENCH_QUESTIONS:-20}" \
  --output "${GRID_OUTPUT:-benchmarks/results/gpu_llama2_7b_grids.json}"
