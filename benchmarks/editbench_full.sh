#!/usr/bin/env bash
# The edit benchmark at full size (docs/editing.md), from nothing: 5,000 toyfaces, the t = 0.7
# store and the window store, three SAE layouts each trained on h_t and on the whole window, then
# `hsae editbench` over the four benchmark attributes and windows 1, half and all.
#
# Every stage resumes after a kill: extraction skips its complete shards, training continues
# from its checkpoint, the benchmark reuses its finished parts (OUT/bench/.partial). Each stage's
# wall time is appended to OUT/stages.log (the profile in docs/editing.md).
#
#   bash benchmarks/editbench_full.sh [OUT] [DATA]      # defaults: runs/editbench data/toyfaces-5k
#   T=0.9 WINDOW_SAES=0 bash benchmarks/editbench_full.sh runs/editbench-t0.9   # the depth run
set -euo pipefail
OUT=${1:-runs/editbench}
DATA=${2:-data/toyfaces-5k}
HSAE=${HSAE:-.venv/bin/hsae}
T=${T:-0.7}                  # inversion depth (t / T)
WINDOW_SAES=${WINDOW_SAES:-1} # 0: no window store and no multi-timestep SAEs
STEPS=10   # DDIM steps: 10 and 50 tell the same story (docs/editing.md); 8 resumed steps at t = 0.7
mkdir -p "$OUT/sae"

stage() {  # stage NAME COMMAND...: run it and log its wall time
  local name=$1 start
  shift
  start=$(date +%s)
  "$@"
  echo "$name $(($(date +%s) - start)) s" >>"$OUT/stages.log"
}

train() {  # train NAME STORE FLAGS...: one SAE, resumed from its checkpoint after a kill
  local name=$1 store=$2
  shift 2
  test -f "$OUT/sae/$name/sae.safetensors" ||
    stage "train-$name" "$HSAE" train --store "$store" --out "$OUT/sae/$name" "$@" \
      --steps 2000 --resume --quiet
}

test -d "$DATA" || stage data "$HSAE" data toyfaces --n 5000 --seed 11 --out "$DATA"
stage extract "$HSAE" extract --data "$DATA" --out "$OUT/acts" --t "$T" --steps $STEPS --batch 64 \
  --no-progress
if [ "$WINDOW_SAES" = 1 ]; then
  stage extract-window "$HSAE" extract --data "$DATA" --out "$OUT/acts-window" --t "$T" \
    --steps $STEPS --batch 64 --split train --capture window --no-progress
fi
SPATIAL=(--architecture spatial_topk --latents 1024 --k 16)
FLAT=(--architecture flat --latents 512)
train spatial "$OUT/acts" "${SPATIAL[@]}"
train channel_aware "$OUT/acts" --architecture channel_aware
train flat "$OUT/acts" "${FLAT[@]}"
LAYOUTS=(spatial channel_aware flat)
if [ "$WINDOW_SAES" = 1 ]; then
  train spatial_window "$OUT/acts-window" "${SPATIAL[@]}"
  train channel_aware_window "$OUT/acts-window" --architecture channel_aware \
    --context channel+timestep
  train flat_window "$OUT/acts-window" "${FLAT[@]}"
  LAYOUTS+=(spatial_window channel_aware_window flat_window)
fi

SAES=()
for s in "${LAYOUTS[@]}"; do
  SAES+=("$s=$OUT/sae/$s")
done
stage editbench "$HSAE" editbench --store "$OUT/acts" --data "$DATA" --sae "${SAES[@]}" \
  --attributes Eyeglasses Wearing_Hat Blond_Hair Smiling --n-test 500 --n-val 100 \
  --max-group 100 --windows 1 half all --test-sizes validated --side-windows selected \
  --components channel --top-positions 16 --candidates 8 --effect-images 16 \
  --out "$OUT/bench" --no-progress
