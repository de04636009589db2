"""report.html in a real headless Chromium (Debian's, driven by Playwright, as test_ui_browser.py
does): the tables are there and show the numbers of results.jsonl, every image loads, the plot
renders, and the page fetches nothing (it is self-contained).

Set NOISEALIGN_REPORT_SCREENSHOT to a path to also save a screenshot of the page there.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
from test_report import swept  # noqa: F401  (the sweep and report this page shows)
from test_ui_browser import CHROMIUM, CHROMIUM_ARGS, _missing as browser_missing


@pytest.fixture(scope="module")
def page(swept):
    reason = browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests, errors = [], []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((swept / "report.html").as_uri())
        page.wait_for_load_state("load")
        yield page
        browser.close()
    assert not errors, errors
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


def test_the_tables_show_the_numbers_of_results_jsonl(page, swept):
    for table in ("summary", "budgets-digit", "cross-reward", "hacking", "diversity"):
        assert page.is_visible(f"table#{table}"), table
    lines = [json.loads(line) for line in (swept / "results.jsonl").read_text().splitlines()]
    rows = page.locator("table#summary tbody tr")
    assert rows.count() == 6   # (best-of-n at 2 and 4, demon at 4) x (digit:3, digit:8)
    for r in range(rows.count()):
        cells = rows.nth(r).locator("td")
        label, reward, budget = (cells.nth(i).inner_text() for i in range(3))
        group = [line for line in lines if (line["label"], line["reward"], str(line["budget"])) == (label, reward, budget)]
        assert len(group) == 4
        for column, values in [("final reward", [line["final_reward"] for line in group]),
                               ("eval: digit:8", [line["evaluation"]["digit:8"] for line in group])]:
            mean = float(np.mean(values))
            se = float(np.std(values, ddof=1) / math.sqrt(len(values)))
            cell = rows.nth(r).locator(f'td[data-column="{column}"]')
            assert cell.inner_text() == f"{mean:.4g} ± {se:.2g}"
            assert float(cell.get_attribute("data-mean")) == pytest.approx(mean, rel=1e-12)
    plain = page.locator("table#cross-reward tbody tr").first
    assert plain.locator("td").first.inner_text() == "plain (baseline)"
    baselines = {(line["prompt"], line["seed"]): line["baseline_evaluation"]["brightness"] for line in lines}
    shown = float(plain.locator('td[data-column="brightness"]').get_attribute("data-mean"))
    assert shown == pytest.approx(np.mean(list(baselines.values())), rel=1e-12)


def test_every_image_loads_and_the_plot_renders(page, swept):
    images = page.locator("img.grid-image")
    assert images.count() == 2 * (1 + 2 * 2) * 2   # prompts x (plain, (best-of-n, demon) x optimized) x seeds
    loaded = page.evaluate("Array.from(document.querySelectorAll('img.grid-image'))"
                           ".map(img => img.complete && img.naturalWidth > 0)")
    assert all(loaded) and page.get_attribute("img.grid-image", "src").startswith("data:image/png;base64,")
    plot = page.locator("figure.plot svg")
    assert plot.count() == 1 and plot.bounding_box()["width"] > 600
    assert "reward queries" in plot.text_content() and "plain (baseline)" in plot.text_content()
    screenshot = swept / "report.png"
    page.screenshot(path=screenshot)
    assert screenshot.stat().st_size > 20_000
    if os.environ.get("NOISEALIGN_REPORT_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["NOISEALIGN_REPORT_SCREENSHOT"])
