"""A real browser (Debian chromium through Playwright) uploads an image and reads the result."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_app_client import lesion_file, serve

from skinlesion import app as logic

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_analyze_shows_label_overlay_and_disclaimer(browser, tiny_model_folder: Path, tmp_path: Path):
    registry = logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder))])
    registry.load_all()
    image = lesion_file(tmp_path / "in", seed=11, label=1, size=(300, 225))
    expected = registry.get("tiny_model").predict(image)
    screenshot = tmp_path / "app_result.png"
    with serve(registry) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector("#analyze", timeout=120_000)
        assert page.get_by_text("Research demo, not a diagnosis").is_visible()

        page.locator("#input-image input[type=file]").set_input_files(str(image))
        page.wait_for_selector("#input-image img", timeout=60_000)  # the upload preview
        page.click("#analyze")
        page.wait_for_selector("#overlay img", timeout=120_000)
        page.wait_for_function("document.querySelector('#label') && "
                               "document.querySelector('#label').innerText.includes('%')", timeout=60_000)

        label_text = page.locator("#label").inner_text()
        assert logic.label_key(expected.label) in label_text
        assert page.locator("#overlay img").evaluate("img => img.naturalWidth") == 300
        assert f"{expected.label_name} (" in page.locator("#summary").inner_text()
        assert "TTA agreement" in page.locator("#agreement").inner_text()
        page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


def test_a_broken_upload_shows_an_error_toast(browser, tiny_model_folder: Path, tmp_path: Path):
    registry = logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder))])
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with serve(registry) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector("#analyze", timeout=120_000)
        page.locator("#input-image input[type=file]").set_input_files(str(bad))
        page.wait_for_timeout(1500)
        page.click("#analyze")
        toast = page.get_by_text("Could not read the image", exact=False).first
        toast.wait_for(timeout=60_000)
        assert "not an image file" in toast.inner_text()


def test_class_dropdown_follows_the_selected_model(browser, tiny_model_folder: Path, tmp_path: Path):
    from skinlesion.models import create_model
    from skinlesion.models.folder import load_model_folder, save_model_folder

    loaded = load_model_folder(tiny_model_folder)
    two_class = create_model("lesion_cnn", 2, widths=(8, 16, 16, 32), hidden=16).eval()
    other = save_model_folder(tmp_path / "cancer_model", two_class, architecture="lesion_cnn",
                              label_names=["akiec", "bcc"], preprocessing=loaded.preprocessing,
                              model_args={"widths": [8, 16, 16, 32], "hidden": 16})
    registry = logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder)), logic.ModelSpec(str(other))])
    registry.load_all()

    def class_options(page) -> list[str]:
        page.locator("#target input").click()
        options = page.locator("#target [role=option]")
        options.first.wait_for(timeout=30_000)
        labels = [options.nth(i).get_attribute("aria-label") for i in range(options.count())]
        page.keyboard.press("Escape")
        return labels

    with serve(registry) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector("#analyze", timeout=120_000)
        assert "Melanoma (mel)" in class_options(page)

        page.locator("#model input").click()
        page.locator("#model [role=option][aria-label=cancer_model]").click()
        page.wait_for_function("document.body.innerText.includes('Basal cell carcinoma (`bcc`')"
                               " || document.body.innerText.includes('Basal cell carcinoma (bcc')", timeout=60_000)
        after = class_options(page)
        assert after == ["predicted class", "Actinic keratosis / intraepithelial carcinoma (akiec)",
                         "Basal cell carcinoma (bcc)"]


def test_clicking_a_shipped_example_runs_the_analysis(browser, tiny_model_folder: Path, tmp_path: Path):
    """The committed examples are shown with their true diagnosis, and one click gives a result."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    registry = logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder))])
    registry.load_all()
    screenshot = tmp_path / "app_example.png"
    with serve(registry, examples) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector("#analyze", timeout=120_000)
        caption = page.get_by_text("True: Melanoma", exact=False).first
        caption.wait_for(timeout=60_000)
        caption.click()
        page.wait_for_selector("#overlay img", timeout=120_000)
        page.wait_for_function("document.querySelector('#label') && "
                               "document.querySelector('#label').innerText.includes('%')", timeout=60_000)
        assert "TTA agreement" in page.locator("#agreement").inner_text()
        page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
