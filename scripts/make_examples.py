"""Choose and write the app's clickable examples (examples/), with their origin and licence.

    python scripts/make_examples.py --model weights --data ../shared/data/HAM10000 --out examples

One HAM10000 image per class the shipped model knows, always from the TRAIN split of the model
folder's own split manifest (never validation or test: the examples must not leak evaluation
images, and they are not evidence of accuracy). For each class a few candidates are scored with the
model's own TTA; the example is the most confidently correct one, except for one class (melanoma by
default, the class a visitor most needs to see the model get wrong) where the hardest candidate is
kept: misclassified if any is, else the least confident. One non-dermoscopic photo (scikit-image's
`chelsea`, CC0) shows the not-a-lesion refusal. Each image is re-encoded as a small JPEG, and
`examples.csv` + `README.md` record file, image id, true diagnosis, what the model said, and licence.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from PIL import Image

from skinlesion.constants import MANIFEST_FILE
from skinlesion.data import load_table, read_manifest, select_split
from skinlesion.data.splits import manifest_hash
from skinlesion.inference.predictor import Predictor
from skinlesion.taxonomy import describe_label

HAM_LICENCE = "CC BY-NC-SA 4.0"
HAM_ATTRIBUTION = ("HAM10000: Tschandl P., Rosendahl C., Kittler H., The HAM10000 dataset, a large collection of "
                   "multi-source dermatoscopic images of common pigmented skin lesions. Sci Data 5, 180161 (2018)")
CAT_LICENCE = "CC0 (no copyright restrictions)"
CAT_ATTRIBUTION = "scikit-image's `skimage.data.chelsea()`, photograph by Stefan van der Walt"
MAX_BYTES = 60_000
COLUMNS = ["file", "image_id", "true_label", "true_diagnosis", "dx_type", "model_label", "model_confidence",
           "source", "licence", "attribution"]


def small_jpeg(img: Image.Image, max_side: int = 450) -> bytes:
    """Re-encode (and shrink if needed) until the file is at most MAX_BYTES."""
    img = img.convert("RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    for quality in (90, 85, 80, 70, 60):
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=quality, optimize=True)
        if buffer.tell() <= MAX_BYTES:
            return buffer.getvalue()
    raise ValueError(f"could not encode an example under {MAX_BYTES} bytes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="weights", help="local model folder with its split_manifest.csv")
    p.add_argument("--data", required=True, help="HAM10000 folder")
    p.add_argument("--out", default="examples", type=Path)
    p.add_argument("--candidates", type=int, default=24, help="train images scored per class")
    p.add_argument("--hard-class", default="mel", help="class whose example is the hardest candidate")
    args = p.parse_args()

    folder = Path(args.model)
    manifest_path = folder / MANIFEST_FILE
    predictor = Predictor.from_pretrained(folder, use_onnx=False)
    table = select_split(load_table(args.data), read_manifest(manifest_path), "train")
    frame = table.frame  # HAM10000's table carries dx_type (how the diagnosis was confirmed)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in predictor.label_names:
        pool = frame[frame["label"] == label]
        if pool.empty:
            continue  # the issue: one per class *represented in the train split*
        # Prefer histopathology-confirmed lesions (the strongest ground truth) when the metadata says so.
        if (pool["dx_type"] == "histo").sum() >= 5:
            pool = pool[pool["dx_type"] == "histo"]
        pool = pool.sample(n=min(args.candidates, len(pool)), random_state=0)
        preds = predictor.predict(list(pool["path"]))
        scored = [(pred.probs[label], pred, row) for pred, (_, row) in zip(preds, pool.iterrows(), strict=True)
                  if not pred.out_of_distribution]
        if label == args.hard_class:
            wrong = [s for s in scored if s[1].label != label]
            _, pred, row = min(wrong or scored, key=lambda s: s[0])
        else:
            _, pred, row = max(scored, key=lambda s: s[0])
        image_id = Path(row["path"]).stem
        name = f"{label}_{image_id}.jpg"
        (args.out / name).write_bytes(small_jpeg(Image.open(row["path"])))
        rows.append({"file": name, "image_id": image_id, "true_label": label,
                     "true_diagnosis": describe_label(label).name, "dx_type": row["dx_type"] if isinstance(row["dx_type"], str) else "",
                     "model_label": pred.label, "model_confidence": f"{pred.confidence:.2f}",
                     "source": f"HAM10000 train split of {folder}/{MANIFEST_FILE} (sha256 {manifest_hash(manifest_path)[:12]})",
                     "licence": HAM_LICENCE, "attribution": HAM_ATTRIBUTION})

    from skimage.data import chelsea

    cat = Image.fromarray(chelsea())
    (args.out / "not_a_lesion_cat.jpg").write_bytes(small_jpeg(cat))
    pred = predictor.predict(cat)
    rows.append({"file": "not_a_lesion_cat.jpg", "image_id": "", "true_label": "", "true_diagnosis": "not a skin lesion (a cat)",
                 "dx_type": "", "model_label": "out of distribution" if pred.out_of_distribution else pred.label,
                 "model_confidence": "" if pred.out_of_distribution else f"{pred.confidence:.2f}",
                 "source": "scikit-image sample data", "licence": CAT_LICENCE, "attribution": CAT_ATTRIBUTION})

    with (args.out / "examples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "README.md").write_text(render_readme(rows))
    # Examples picked for an earlier model are no longer listed (nor described in README.md): remove them, so
    # the folder holds exactly the images its licence table names.
    listed = {row["file"] for row in rows}
    for stale in sorted(args.out.glob("*.jpg")):
        if stale.name not in listed:
            stale.unlink()
            print("removed", stale.name, "(not picked for this model)")
    for row in rows:
        print(row["file"], row["true_label"] or "-", "->", row["model_label"], row["model_confidence"])


def render_readme(rows: list[dict]) -> str:
    lines = [
        "# App examples",
        "",
        "Clickable examples for `python app.py` and the Space: one HAM10000 image per class from the **training** split",
        "of the shipped model's manifest (never validation or test images; the model has seen these, so they show",
        "what the app does, not how accurate it is), plus one photo that is not a dermoscopic image. Made by",
        "",
        "    python scripts/make_examples.py --model weights --data ../shared/data/HAM10000 --out examples",
        "",
        "| file | true diagnosis | HAM10000 image id | confirmed by | shipped model said | licence | attribution |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        said = f"{r['model_label']} {r['model_confidence']}".strip()
        lines.append(f"| `{r['file']}` | {r['true_diagnosis']} | {r['image_id'] or '-'} | {r['dx_type'] or '-'} | "
                     f"{said} | {r['licence']} | {r['attribution']} |")
    lines += ["", "HAM10000 images are licensed CC BY-NC-SA 4.0 (non-commercial, share-alike); keep this file beside them.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
