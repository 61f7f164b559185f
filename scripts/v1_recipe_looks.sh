#!/bin/bash
# v1's recipe (24 x 300 drives, 5 epochs x 2000 frames, lr 1e-3, training seed 1) for one NCP-LTC
# on plain looks (randomize false, close to v1's flat world) and one on today's varied looks, each
# evaluated under v1's choices (lenient, 20 s, seed 1000) and v2's (strict, 45 s, seed 5000).
# Resumes: a finished dataset, run or report is kept. Usage: OUT=runs/v1-recipe scripts/v1_recipe_looks.sh
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
D=${DRIVING:-.venv/bin/driving}
OUT=${OUT:-runs/v1-recipe}
mkdir -p "$OUT"
for look in plain varied; do
  if [ $look = plain ]; then R=false; else R=true; fi
  [ -f "$OUT/data-$look/DONE_OK" ] || { $D collect --env liquid_drive/RandomRoad-v0 --episodes 24 --steps 300 --seed 0 --dart-noise 0.15 --env-config "{\"split\": \"train\", \"randomize\": $R}" --out "$OUT/data-$look" --quiet && touch "$OUT/data-$look/DONE_OK"; }
  [ -f "$OUT/run-$look/DONE" ] || $D train --data "$OUT/data-$look" --policy ncp-ltc --out "$OUT/run-$look" --epochs 5 --max-frames 2000 --val-fraction 0.0834 --lr 0.001 --seed 1 --threads 1 --patience 0 > "$OUT/train-$look.log" 2>&1
  for cfg in "lenient 200 1000" "strict 450 5000"; do
    set -- $cfg
    out="$OUT/ncp-ltc_$look-$1-$2-$3"
    [ -f "$out/report.json" ] || $D eval --checkpoint "$OUT/run-$look" --env liquid_drive/RandomRoad-v0 --env-config "{\"split\": \"test\", \"randomize\": $R}" --episodes 10 --steps $2 --seed $3 --corruptions none,noise:3-5 --intervention $1 --no-plots --no-expert-reference --out "$out" > "$out.log" 2>&1
  done
done
echo "done: reports in $OUT/ncp-ltc_*/report.json"
