#!/usr/bin/env bash
# Regenerate the shipped agents (assets/pretrained/ncp-cfc, ncp-ltc) from nothing: the exact
# chain of `driving` commands that made them (their TRAINED_WITH.md quotes it).
#
#   scripts/retrain_pretrained.sh DIR        # about 60 min on an idle 2-core CPU with bf16
#
# Stage 0 is the first generalist NCP-CfC (24 drives on default random roads); every later
# stage fine-tunes the previous one (`--init-from`) on roads with bends as tight as the
# racetrack's (`radius_m`), stateful 8-frame windows and DAgger rounds. The NCP-LTC starts
# from stage 0's perception CNN (`--init-cnn-from`) with a fresh core, on its own copy of the
# data (DAgger appends its rollouts to --data). Every stage resumes where it stopped: rerun
# the script with the same DIR.
set -euo pipefail
DIR=${1:?usage: scripts/retrain_pretrained.sh DIR}
D=${DRIVING:-driving}
PREC=${PRECISION:-bf16}  # fp32 where the CPU has no native bf16 (slower, same recipe)
mkdir -p "$DIR"
road() {  # road [LOW HIGH [STRAIGHT]]: 800 m train-split roads, bends of LOW-HIGH m (none:
  # the default), a straight after an arc with probability STRAIGHT (none: the default 0.75)
  if [ $# -eq 0 ]; then printf '{"track_kwargs": {"length": 800.0}}'; return; fi
  local straight=""; [ $# -ge 3 ] && straight=$(printf ', "straight_prob": %s' "$3")
  printf '{"track_kwargs": {"length": 800.0, "radius_m": [%s, %s]%s}}' "$1" "$2" "$straight"
}
collect() {  # collect DATA SEED EPISODES STEPS DART [LOW HIGH [STRAIGHT]]
  $D collect --env liquid_drive/RandomRoad-v0 --env-config "$(road "${@:6}")" --out "$1" \
    --seed "$2" --episodes "$3" --steps "$4" --dart-noise "$5" --workers 2 --quiet
}
train() {  # train OUT ARGS... (skips a finished stage, resumes an interrupted one)
  local out=$1; shift
  if [ -e "$out/DONE" ]; then echo "$out: done"; return; fi
  local resume=(); [ -d "$out/last" ] && resume=(--resume)
  $D train --out "$out" --stateful --seq-len 8 --threads 1 --val-fraction 0.1 \
    --precision "$PREC" "$@" "${resume[@]}"
  touch "$out/DONE"
}
# stage 0: the first generalist NCP-CfC (default roads, 4-frame windows, one DAgger round)
[ -e "$DIR/cfc0/DONE" ] || {
  $D collect --env liquid_drive/RandomRoad-v0 --episodes 24 --steps 400 --out "$DIR/data0" \
    --seed 0 --workers 2 --dart-noise 0.15 --quiet
  $D train --data "$DIR/data0" --policy ncp-cfc --out "$DIR/cfc0" --epochs 6 --max-frames 3000 \
    --seed 0 --threads 2 --dagger-rounds 1 --dagger-episodes 6 --dagger-steps 300
  touch "$DIR/cfc0/DONE"
}

# Each data step runs once (its marker file): a later stage's DAgger rounds append to the data.
# tight-road drives: 48 x 500 (DART 0.15) + 32 x 500 (DART 0.3), bends of 10-60 m
if [ ! -e "$DIR/.data12" ]; then
  collect "$DIR/cfc_data" 100 48 500 0.15 10 60
  collect "$DIR/cfc_data" 200 32 500 0.3 10 60
  rm -rf "$DIR/ltc_data" && cp -r "$DIR/cfc_data" "$DIR/ltc_data"
  touch "$DIR/.data12"
fi

dagger=(--dagger-steps 400 --dagger-beta 0.3)
train "$DIR/cfc1" --data "$DIR/cfc_data" --init-from "$DIR/cfc0" --epochs 5 --max-frames 6000 \
  --lr 0.001 --seed 0 --dagger-rounds 3 --dagger-episodes 12 "${dagger[@]}"
train "$DIR/ltc1" --data "$DIR/ltc_data" --policy ncp-ltc --init-cnn-from "$DIR/cfc0" --epochs 6 \
  --max-frames 6000 --lr 0.003 --cnn-lr-factor 0.3 --seed 0 --dagger-rounds 3 \
  --dagger-episodes 12 "${dagger[@]}"

dagger=(--dagger-steps 400 --dagger-beta 0.2)
train "$DIR/cfc2" --data "$DIR/cfc_data" --init-from "$DIR/cfc1" --epochs 4 --max-frames 8000 \
  --lr 0.0005 --seed 1 --dagger-rounds 3 --dagger-episodes 16 "${dagger[@]}"
train "$DIR/ltc2" --data "$DIR/ltc_data" --init-from "$DIR/ltc1" --epochs 4 --max-frames 8000 \
  --lr 0.0015 --cnn-lr-factor 0.3 --seed 1 --dagger-rounds 3 --dagger-episodes 16 "${dagger[@]}"

# 32 x 400 drives on bends of 10-25 m (DART 0.2) into both datasets
if [ ! -e "$DIR/.data3" ]; then
  for d in cfc_data ltc_data; do collect "$DIR/$d" 300 32 400 0.2 10 25; done
  touch "$DIR/.data3"
fi
train "$DIR/cfc3" --data "$DIR/cfc_data" --init-from "$DIR/cfc2" --epochs 4 --max-frames 8000 \
  --lr 0.0003 --seed 2 --dagger-rounds 3 --dagger-episodes 16 "${dagger[@]}"
train "$DIR/ltc3" --data "$DIR/ltc_data" --init-from "$DIR/ltc2" --epochs 4 --max-frames 8000 \
  --lr 0.001 --cnn-lr-factor 0.3 --seed 2 --dagger-rounds 3 --dagger-episodes 16 "${dagger[@]}"

# 64 x 400 drives on bends of 10-30 m (DART 0.3) into both datasets
if [ ! -e "$DIR/.data4" ]; then
  for d in cfc_data ltc_data; do collect "$DIR/$d" 400 64 400 0.3 10 30; done
  touch "$DIR/.data4"
fi
train "$DIR/cfc4" --data "$DIR/cfc_data" --init-from "$DIR/cfc3" --epochs 6 --max-frames 10000 \
  --lr 0.0003 --seed 3 --dagger-rounds 3 --dagger-episodes 20 "${dagger[@]}"
train "$DIR/ltc4" --data "$DIR/ltc_data" --init-from "$DIR/ltc3" --epochs 6 --max-frames 10000 \
  --lr 0.001 --cnn-lr-factor 0.3 --seed 3 --dagger-rounds 3 --dagger-episodes 20 "${dagger[@]}"
# 32 x 400 drives on the default roads (DART 0.2) into both datasets; DAgger mostly on-policy
if [ ! -e "$DIR/.data5" ]; then
  for d in cfc_data ltc_data; do collect "$DIR/$d" 500 32 400 0.2; done
  touch "$DIR/.data5"
fi
dagger=(--dagger-steps 400 --dagger-beta 0.1)
train "$DIR/cfc5" --data "$DIR/cfc_data" --init-from "$DIR/cfc4" --epochs 5 --max-frames 10000 \
  --lr 0.0002 --seed 4 --dagger-rounds 3 --dagger-episodes 24 "${dagger[@]}"
train "$DIR/ltc5" --data "$DIR/ltc_data" --init-from "$DIR/ltc4" --epochs 5 --max-frames 10000 \
  --lr 0.0005 --cnn-lr-factor 0.3 --seed 4 --dagger-rounds 3 --dagger-episodes 24 "${dagger[@]}"
# stage 6 (NCP-CfC only): a fresh dataset of chicane roads (back-to-back bends of 10-25 m)
# and roads with bends of 10-60 m; it was chosen over a twin at lr 2e-4 on validation roads.
if [ ! -e "$DIR/.data6" ]; then
  collect "$DIR/cfc_data6" 600 48 400 0.2 10 25 0.25
  collect "$DIR/cfc_data6" 700 32 400 0.2 10 60
  touch "$DIR/.data6"
fi
train "$DIR/cfc6" --data "$DIR/cfc_data6" --init-from "$DIR/cfc5" --epochs 5 --max-frames 10000 \
  --lr 0.0005 --seed 6 --dagger-rounds 3 --dagger-episodes 16 "${dagger[@]}"
echo "shipped agents: $DIR/cfc6 (ncp-cfc), $DIR/ltc5 (ncp-ltc)"
