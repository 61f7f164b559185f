#!/bin/bash
# v1 recipe (24 x 300 drives, 5 epochs x 2000 frames, lr 1e-3, seed 1), with and without the appearance variety
export OMP_NUM_THREADS=1
D=${DRIVING:-.venv/bin/driving}; mkdir -p ${OUT:-runs/v1-recipe}
for look in plain varied; do
  if [ $look = plain ]; then R=false; else R=true; fi
  [ -f ${OUT:-runs/v1-recipe}/data-$look/DONE_OK ] || { $D collect --env liquid_drive/RandomRoad-v0 --episodes 24 --steps 300 --seed 0 --dart-noise 0.15 --env-config "{\"split\": \"train\", \"randomize\": $R}" --out ${OUT:-runs/v1-recipe}/data-$look --quiet && touch ${OUT:-runs/v1-recipe}/data-$look/DONE_OK; }
  [ -f ${OUT:-runs/v1-recipe}/run-$look/DONE ] || $D train --data ${OUT:-runs/v1-recipe}/data-$look --policy ncp-ltc --out ${OUT:-runs/v1-recipe}/run-$look --epochs 5 --max-frames 2000 --val-fraction 0.0834 --lr 0.001 --seed 1 --threads 1 --patience 0 > ${OUT:-runs/v1-recipe}/train-$look.log 2>&1
  for cfg in "lenient 200 1000" "strict 450 5000"; do set -- $cfg
    out=${OUT:-runs/v1-recipe}/ncp-ltc_$look-$1-$2-$3
    [ -f $out/report.json ] || $D eval --checkpoint ${OUT:-runs/v1-recipe}/run-$look --env liquid_drive/RandomRoad-v0 --env-config "{\"split\": \"test\", \"randomize\": $R}" --episodes 10 --steps $2 --seed $3 --corruptions none,noise:3-5 --intervention $1 --no-plots --no-expert-reference --out $out > $out.log 2>&1
  done
done
echo V1REC DONE
