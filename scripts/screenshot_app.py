"""The README's screenshot: `python app.py` answering one real lesion, photographed by Debian chromium.

    python scripts/screenshot_app.py                                   # the default example -> docs/img/app.png
    python scripts/screenshot_app.py --image examples/nv_ISIC_0032355.jpg --out docs/img/app.png

Starts `python app.py` (the shipped weights/, offline) on a free port, uploads the image through the page as a
user would, waits for the answer, and saves the top of the page as a small palette PNG (the README's picture
must stay small: --max-kb). The default image is a training-split example from examples/ that the shipped model
gets right (examples/examples.csv), a malignant class first; it shows what the app does, not how accurate it is.
Needs Debian chromium (`apt-get install chromium`) and Playwright (`pip install -e ".[dev]"`); no browser download.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PREFERRED = ("mel", "bcc", "akiec", "nv", "bkl", "df", "vasc")  # a malignant class the model gets right, first


def default_image(examples: Path) -> Path:
    with (examples / "examples.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["true_label"] and r["true_label"] == r["model_label"]]
    if not rows:
        raise SystemExit(f"no example in {examples}/examples.csv that the model gets right; pass --image")
    rows.sort(key=lambda r: PREFERRED.index(r["true_label"]) if r["true_label"] in PREFERRED else len(PREFERRED))
    return examples / rows[0]["file"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"app.py did not answer at {url} within {timeout:.0f} s")


def shoot(url: str, image: Path, width: int, height: int) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_selector("#analyze", timeout=120_000)
            page.locator("#input-image input[type=file]").set_input_files(str(image))
            page.wait_for_selector("#input-image img", timeout=60_000)
            page.click("#analyze")
            page.wait_for_selector("#overlay img", timeout=180_000)
            page.wait_for_function("document.querySelector('#label') && "
                                   "document.querySelector('#label').innerText.includes('%')", timeout=60_000)
            page.wait_for_timeout(1000)  # let the overlay and the label bars finish drawing
            page.evaluate("window.scrollTo(0, 0)")  # Gradio scrolls to the output; the picture starts at the upload
            page.wait_for_timeout(300)
            return page.screenshot(full_page=False)
        finally:
            browser.close()


def small_png(png: bytes, out: Path, *, scale: float, max_kb: int) -> int:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    # A 256-colour palette keeps text sharp at a fraction of the size of true colour.
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    size_kb = out.stat().st_size // 1024
    if size_kb > max_kb:
        raise SystemExit(f"{out} is {size_kb} KB, over --max-kb {max_kb}: lower --scale")
    return size_kb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=None, help="image to upload (default: see above)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "app.png")
    parser.add_argument("--model", default=None, help="passed to app.py --model (default: the shipped weights/)")
    parser.add_argument("--width", type=int, default=1280, help="browser viewport width")
    parser.add_argument("--height", type=int, default=1120, help="browser viewport height (the part saved)")
    parser.add_argument("--scale", type=float, default=0.7, help="the PNG's size relative to the viewport")
    parser.add_argument("--max-kb", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for app.py to serve")
    args = parser.parse_args(argv)
    image = (args.image or default_image(REPO / "examples")).resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), *(["--model", args.model] if args.model else [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tempfile.TemporaryFile()  # the app's output, shown only if it fails (a pipe nobody reads could fill)
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_for(url, proc, args.timeout)
        except SystemExit:
            log.seek(0)
            print(log.read().decode(errors="replace")[-3000:], file=sys.stderr)
            raise
        png = shoot(url, image, args.width, args.height)
    finally:
        proc.terminate()  # only the app this script started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    size_kb = small_png(png, args.out, scale=args.scale, max_kb=args.max_kb)
    print(f"{args.out}: {image.name} answered by `{' '.join(command[1:])}`, {size_kb} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
