#!/usr/bin/env bash
# After training: everything a model folder needs before it ships, chosen on the VALIDATION split only,
# then the test reports (scored once, after every choice). Commands as recorded in train_summary.json.
#
#   scripts/post_training.sh FOLDER HAM10000_DIR EXTERNAL_DIR "SIZES" OOD_ROOT
#   scripts/post_training.sh runs/ship ../shared/data/HAM10000 ../shared/data/ISIC2017_test "192 208 224" runs/ood_sets
#
# Steps: test-time input size (choose_input_size.py) -> temperature (evaluate.py --fit-temperature) ->
# OOD candidates compared (measure_ood.py; read its table and set OOD_ARGS) -> OOD statistics and case
# index (fit_features) -> test and external reports with the flag rate of every OOD folder.
# OOD_ARGS defaults to the candidate the measure step chose by its validation-only rule ("chosen" in
# $OUT/measure_ood/measure_ood.json); set it to override. TAPS and COMBOS name the modules the measure step
# taps (default: an EfficientNet/MobileNetV2's blocks; a feature_ensemble's are e.g. backbones.0.blocks.5).
# DATA lists every training source (default: HAM10000_DIR alone): the temperature is fitted on, and the OOD
# candidates compared, statistics and case index fitted on, all their validation/training images, since other clinics' dermoscopy is
# in-distribution. E.g. DATA="../shared/data/HAM10000 ../shared/data/ISIC2017_train ../shared/data/ISIC2017_val".
set -euo pipefail
FOLDER=$1 HAM=$2 EXTERNAL=$3 SIZES=$4 OOD_ROOT=$5
STEP=${STEP:-all}   # all, or one of: size temperature measure fit report
PY=${PY:-python}
DATA=${DATA:-$HAM}
OUT=${OUT:-runs/post_$(basename "$FOLDER")}
TAPS=${TAPS:-blocks.0 blocks.1 blocks.2 blocks.3 blocks.4 blocks.5 blocks.6}
COMBOS=${COMBOS:-blocks.5,blocks.6 blocks.4,blocks.5 blocks.4,blocks.5,blocks.6}
chosen_ood_args() {
  $PY -c 'import json, sys; c = json.load(open(sys.argv[1]))["chosen"]; c or sys.exit("measure_ood: no eligible OOD candidate; set OOD_ARGS"); print(" ".join(c["fit_args"]))' \
    "$OUT/measure_ood/measure_ood.json"
}
mkdir -p "$OUT"
ood_folders=()
for d in "$OOD_ROOT"/*/; do ood_folders+=(--ood-folder "${d%/}"); done
run() { echo "+ $*" >&2; "$@"; }

if [[ $STEP == all || $STEP == size ]]; then
  # shellcheck disable=SC2086
  run $PY scripts/choose_input_size.py --model "$FOLDER" --data "$HAM" --sizes $SIZES --workers 2 --write
fi
if [[ $STEP == all || $STEP == temperature ]]; then
  # shellcheck disable=SC2086
  run $PY evaluate.py --model "$FOLDER" --data $DATA --split val --fit-temperature --tta flips --no-progress \
    --workers 2 --bootstrap 0 --out "$OUT/val"
fi
if [[ $STEP == all || $STEP == measure ]]; then
  # shellcheck disable=SC2086
  run $PY scripts/measure_ood.py --model "$FOLDER" --data $DATA --external "$EXTERNAL" --ood-root "$OOD_ROOT" \
    --out "$OUT/measure_ood" --taps $TAPS --combos $COMBOS --dims 128 --vote-k 10 20 40
fi
if [[ $STEP == all || $STEP == fit ]]; then
  OOD_ARGS=${OOD_ARGS:-$(chosen_ood_args)}
  # shellcheck disable=SC2086
  run $PY -m skinlesion fit-features --model "$FOLDER" --data $DATA --workers 2 --no-progress $OOD_ARGS
fi
if [[ $STEP == all || $STEP == report ]]; then
  # --by: the per-group tables the model card and the README's limits show (the external set has no metadata).
  run $PY evaluate.py --model "$FOLDER" --data "$HAM" --split test --tta flips --workers 2 --no-progress \
    --out "$FOLDER/eval/ham10000_test" "${ood_folders[@]}" --by sex age site dx_type source
  run $PY evaluate.py --model "$FOLDER" --data "$EXTERNAL" --tta flips --workers 2 --no-progress \
    --out "$FOLDER/eval/$(basename "$EXTERNAL" | tr "[:upper:]" "[:lower:]")" --by source
fi
