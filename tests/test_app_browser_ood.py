"""In a real browser: a lesion gets a result and its similar cases; a non-dermoscopic image gets a refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import synthetic_lesion
from fitted_folder import make_fitted, non_lesion_images
from test_app_browser import browser  # noqa: F401  (the fixture)
from test_app_client import serve

from skinlesion import app as logic

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def analyze(page, path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#input-image img", timeout=60_000)
    page.click("#analyze")


def test_lesion_result_with_cases_then_a_refusal(browser, tmp_path: Path):  # noqa: F811
    fitted = make_fitted(tmp_path / "fit")
    registry = logic.ModelRegistry([logic.ModelSpec(str(fitted.folder))])
    registry.load_all()
    lesion, noise = tmp_path / "lesion.png", tmp_path / "noise.png"
    synthetic_lesion(101, (300, 225), label=1).save(lesion)
    non_lesion_images()["colour noise"].resize((300, 225)).save(noise)
    with serve(registry, case_images=logic.CaseImages.from_folder(fitted.data)) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector("#analyze", timeout=120_000)
        assert "Out-of-distribution check: mahalanobis" in page.locator("#ood-status").inner_text()

        analyze(page, lesion)
        page.wait_for_selector("#cases-gallery img", timeout=120_000)
        assert logic.OOD_REFUSAL not in page.locator("#warnings").inner_text()
        assert page.locator("#label").is_visible() and page.locator("#overlay img").is_visible()
        assert page.locator("#cases-gallery img").count() == 5
        assert "Retrieval vote" in page.locator("#cases-status").inner_text()
        page.locator("#cases-gallery img").first.click()  # shows the case large beside the upload
        page.wait_for_selector("#case-selected img", timeout=60_000)
        assert "confirmed" in page.locator("#case-caption").inner_text()
        page.screenshot(path=str(tmp_path / "lesion.png"), full_page=True)

        analyze(page, noise)
        page.get_by_text(logic.OOD_REFUSAL).first.wait_for(timeout=120_000)
        page.get_by_text("Show the model's output anyway").first.wait_for(timeout=60_000)
        page.wait_for_function("!document.querySelector('#label') || document.querySelector('#label')"
                               ".offsetParent === null", timeout=60_000)  # collapsed: the ranking is not shown
        page.screenshot(path=str(tmp_path / "refusal.png"), full_page=True)
        page.get_by_text("Show the model's output anyway").first.click()  # still reachable on purpose
        page.wait_for_selector("#label", state="visible", timeout=60_000)
