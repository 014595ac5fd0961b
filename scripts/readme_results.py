"""Print (or write into README.md) the README's results and per-group tables from a model folder's evaluation reports.

    python scripts/readme_results.py                      # print the block for weights/
    python scripts/readme_results.py --write README.md    # replace the blocks between the README's markers

The blocks (the results table, the per-group table) are rendered from `weights/eval/*/report.json` alone (written by `evaluate.py`, the command of each is
printed under the table), so after a new model ships: rerun those commands, then this with `--write`.
`tests/test_readme_results.py` checks that the README's blocks are what the shipped reports render to.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skinlesion.data.datasets_info import dataset_info
from skinlesion.models.card_eval import eval_reports, set_title

# The README holds two generated blocks: the results table (under "How good is it") and the per-group table
# (under "Limits"); each sits between its markers.
MARKERS = {name: (f"<!-- {name}:start (python scripts/readme_results.py --write README.md) -->", f"<!-- {name}:end -->")
           for name in ("results", "groups")}
README_COLUMNS = ("sex", "age", "site", "source")  # the per-group rows the README shows; the card has them all
MIN_N = 30  # groups.MIN_GROUP_IMAGES: smaller groups are listed, not scored


def _f(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ci(ci) -> str:
    return f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci and None not in ci else ""


def results_table(reports: list[tuple[str, dict]]) -> list[str]:
    """One row per test set: balanced accuracy with its interval, melanoma AUC, ECE, and the refusal check."""
    lines = ["| test set | images | balanced accuracy (95% CI) | melanoma AUC | ECE | real lesions refused |",
             "|---|---|---|---|---|---|"]
    refusals = []
    for _, r in reports:
        ood = r.get("ood") or {}
        refused = (ood.get("labelled_set") or {}).get("flag_rate") if ood.get("available") else None
        lines.append(f"| {set_title(r)} | {r['n_images']} | {_f(r.get('balanced_accuracy'))}"
                     f"{_ci(r.get('balanced_accuracy_ci95'))} | {_f((r.get('per_class', {}).get('mel') or {}).get('auc'))} | "
                     f"{_f(r.get('ece'))} | {'—' if refused is None else f'{100 * refused:.1f}%'} |")
        folders = (ood.get("folders") or {}) if ood.get("available") else {}
        if folders:
            n = sum(f["n_images"] for f in folders.values())
            flagged = sum(f["n_flagged"] for f in folders.values())
            worst = min(folders.items(), key=lambda kv: kv[1]["flag_rate"])
            refusals.append(f"Non-dermoscopic images refused: **{100 * flagged / n:.0f}%** of {n} (charts, photos, "
                            f"screenshots, other medical images...; lowest: {Path(worst[0]).name} "
                            f"{100 * worst[1]['flag_rate']:.0f}%).")
    return [*lines, "", *refusals, ""] if refusals else [*lines, ""]


def group_table(reports: list[tuple[str, dict]]) -> list[str]:
    """Sex, age band, site and source in one table: n, malignant sensitivity and melanoma AUC with intervals."""
    rows, small = [], []
    for _, r in reports:
        for column in README_COLUMNS:
            entry = (r.get("by") or {}).get(column)
            if not entry:
                continue
            for g in entry["groups"]:
                name = g["group"]
                if column == "source":
                    info = dataset_info(name)
                    name = f"{info.title if info else name} ({set_title(r)})"
                if g["n"] < MIN_N:
                    if g["group"] != "unknown":
                        small.append(f"{g['group']} ({g['n']})")
                    continue
                ci = g.get("ci95", {})
                rows.append(f"| {column} | {name} | {g['n']} | {_f(g.get('malignant_sensitivity'), 2)}"
                            f"{_ci(ci.get('malignant_sensitivity'))} | {_f(g.get('melanoma_auc'), 2)}"
                            f"{_ci(ci.get('melanoma_auc'))} | {_f(g.get('balanced_accuracy'), 2)} |")
    if not rows:
        return []
    lines = ["| by | group | n | malignant sensitivity | melanoma AUC | balanced accuracy |",
             "|---|---|---|---|---|---|", *rows, ""]
    if small:
        lines += [f"Too few test images to say anything (< {MIN_N}): {', '.join(small)}.", ""]
    return lines


def commands(reports: list[tuple[str, dict]]) -> list[str]:
    out = []
    if any("--ood-folder runs/ood_sets/" in (r.get("command") or "") for _, r in reports):
        out.append("    python scripts/make_ood_folders.py --out runs/ood_sets   # the non-dermoscopic folders, drawn offline")
    for name, r in reports:
        out += [f"    {r['command']}"] if r.get("command") else [f"    # eval/{name}: no command recorded"]
    return out


def render(folder: Path) -> dict[str, str]:
    """{"results": block, "groups": block}, each wrapped in its markers."""
    reports = eval_reports(folder)
    if not reports:
        raise SystemExit(f"{folder}/eval has no report.json: run evaluate.py first")
    results = [*results_table(reports), "Each row is one `evaluate.py` run on the shipped folder (its report is in "
               "`weights/eval/`):", "", *commands(reports)]
    groups = group_table(reports) or ["No per-group report yet: rerun the commands above with `--by sex age site "
                                      "source`.", ""]
    groups = ["Per group of the test sets (`evaluate.py --by`, the commands above). Malignant sensitivity: the share of "
              "mel/bcc/akiec the app answers with a malignant class; balanced accuracy: over the group's classes with "
              "at least 5 images; 95% bootstrap intervals.", "", *groups]
    return {name: "\n".join([MARKERS[name][0], *lines, MARKERS[name][1]]).replace("\n\n" + MARKERS[name][1],
                                                                                  "\n" + MARKERS[name][1])
            for name, lines in (("results", results), ("groups", groups))}


def write(readme: Path, blocks: dict[str, str]) -> None:
    text = readme.read_text()
    for name, block in blocks.items():
        start, end = MARKERS[name]
        if start not in text or end not in text:
            raise SystemExit(f"{readme} has no {name} markers ({start} ... {end})")
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="weights", help="model folder whose eval/*/report.json are rendered")
    parser.add_argument("--write", default=None, metavar="README", help="replace the block in this file")
    args = parser.parse_args(argv)
    folder = Path(args.model)
    blocks = render(folder)
    if args.write:
        write(Path(args.write), blocks)
    else:
        print("\n\n".join(blocks.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
