#!/usr/bin/env bash
# Make a post-trained model folder (scripts/post_training.sh has chosen its size, temperature and OOD
# detector and written its test reports) the shipped default, and regenerate everything derived from it.
#
#   scripts/ship_model.sh runs/ship5 ../shared/data/HAM10000
#
# Refuses a folder whose manifest moves any image of the shipped split_manifest.csv to another split (the
# contract the test reports, the case index and the examples rely on; a folder trained on more sources lists
# more images). Then: copies the folder's files over weights/,
# rewrites the model card and the README's results from the copied reports, re-picks the app's examples
# from the TRAIN split, exports model.onnx (checked against PyTorch) and runs the inference benchmark. Commit the
# result by hand, model.onnx included.
set -euo pipefail
SRC=$1 HAM=$2
DEST=${DEST:-weights}
PY=${PY:-python}
run() { echo "+ $*" >&2; "$@"; }

for f in model.safetensors config.json ood_stats.safetensors case_index.safetensors split_manifest.csv \
         eval/ham10000_test/report.json; do
  [[ -f $SRC/$f ]] || { echo "ship_model: $SRC/$f is missing (run scripts/post_training.sh first)" >&2; exit 1; }
done
# A folder trained on more sources lists more images; every image the shipped manifest lists must keep its split
# (a training image may only have been left out by the near-duplicate screen).
run $PY - "$DEST/split_manifest.csv" "$SRC/split_manifest.csv" <<'PY'
import sys
from skinlesion.data.splits import read_manifest, split_changes
changes = split_changes(read_manifest(sys.argv[1]), read_manifest(sys.argv[2]))
if changes:
    sys.exit(f"ship_model: {sys.argv[2]} moves {len(changes)} image(s) of {sys.argv[1]} to another split "
             f"(first: {changes[0]}); refusing")
PY

# What the folder is: weights, config, fitted extras, training record and reports. README.md (the card)
# is regenerated below; train_summary.json comes along when training wrote one.
# Files the new folder lacks (an ensemble has no training history of its own) must not survive from the old one.
for f in case_thumbnails.safetensors near_duplicates.csv history.csv history.png confusion_matrix_val.png train_summary.json eval; do rm -rf "${DEST:?}/$f"; done
for f in model.safetensors config.json ood_stats.safetensors case_index.safetensors case_thumbnails.safetensors \
         split_manifest.csv near_duplicates.csv history.csv history.png \
         confusion_matrix_val.png train_summary.json eval; do
  [[ -e $SRC/$f ]] && run cp -r "$SRC/$f" "$DEST/"
done
# The recorded commands (fit-features in config.json, evaluate.py in the reports) named $SRC; the same files
# now live in $DEST, so they name it, and anyone can rerun them on the shipped folder.
run $PY - "$SRC" "$DEST" <<'PY'
import sys
from pathlib import Path
src, dest = (a.rstrip("/") for a in sys.argv[1:3])
names = [(src, dest), (f'"{Path(src).name}"', f'"{Path(dest).name}"'), (f"## {Path(src).name}", f"## {Path(dest).name}")]
for path in [Path(dest, "config.json"), *Path(dest, "eval").glob("*/report.json"), *Path(dest, "eval").glob("*/report.md")]:
    text = path.read_text()
    for old, new in names:
        text = text.replace(old, new)
    path.write_text(text)
PY
run $PY -c "import sys; from skinlesion.models.card import write_model_card; write_model_card(sys.argv[1])" "$DEST"
# The README's results and per-group tables are rendered from the same reports.
if [[ $DEST == weights ]]; then run $PY scripts/readme_results.py --model "$DEST" --write README.md; fi
run $PY scripts/make_examples.py --model "$DEST" --data "$HAM" --out examples
# model.onnx is made from the weights and the OOD detector's taps: exported afresh and checked against PyTorch
# (the export refuses to write a file that differs), so the app serves onnxruntime. An old model.onnx would
# only be refused at load (PyTorch serves, with a warning); it never survives a ship.
rm -f "$DEST/model.onnx"
run $PY -m skinlesion export onnx --model "$DEST"
mkdir -p runs
run nice -n 19 $PY -m skinlesion bench inference --model "$DEST" --image-dir "$HAM" --images 128 \
  | tee runs/bench_inference_shipped.json
