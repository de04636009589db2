"""The page end to end in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright): choose over several steps, undo, finish, download, check the run folder.

Without chromium or playwright this module is skipped with the reason, except under CI (the
CI environment variable set), where it fails: CI installs both. Set NOISEALIGN_UI_SCREENSHOT
to a path to also save the mid-run screenshot there.
"""

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from noisealign.methods.base import Problem
from noisealign.methods.demon import DemonConfig
from noisealign.rewards.human import HumanChoice
from noisealign.ui import HumanSession, RunSpec, UIServer
from test_ui_support import save_reference

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright==1.65.2)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def digits():
    return RunSpec("digits").load_model()


@pytest.fixture
def server(tmp_path, digits):
    """The bundled digits model, offline, as `noisealign ui` would run it (short grid, K = 6)."""
    config = DemonConfig(K=6, grid_points=10, beta=DemonConfig().beta_for(digits), lookahead_steps=6)
    session = HumanSession.start(Problem(digits, HumanChoice()), config, seed=1, out=tmp_path / "run",
                                 spec=RunSpec("digits"))
    with UIServer(session) as server:
        yield server


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 640}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def _choose(page, indices, step):
    for index in indices:
        page.click(f'.candidate[data-index="{index}"]')
    assert page.inner_text("#choose") == f"Choose selected ({len(indices)})"
    page.click("#choose")
    page.wait_for_selector(f'#status[data-step="{step}"]')


def test_choose_undo_finish_download_in_chromium(page, server, tmp_path):
    page.goto(server.url)
    page.wait_for_selector(".candidate")
    assert page.locator(".candidate").count() == 6
    _choose(page, [0, 3], step=1)
    _choose(page, [5], step=2)
    page.keyboard.press("2")           # keys select too: candidate 2 is index 1
    page.keyboard.press("Enter")
    page.wait_for_selector('#status[data-step="3"]')
    page.click('.candidate[data-index="4"]')
    screenshot = tmp_path / "ui.png"
    page.screenshot(path=screenshot)
    assert screenshot.stat().st_size > 10_000
    assert page.get_attribute('.candidate[data-index="0"] img', "class") == "pixelated"  # 8 x 8, scaled up sharp
    if os.environ.get("NOISEALIGN_UI_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["NOISEALIGN_UI_SCREENSHOT"])

    page.click("#undo")
    page.wait_for_selector('#status[data-step="2"]')
    assert page.locator("#trajectory li").count() == 3
    _choose(page, [2, 4], step=3)
    page.click("#finish")
    page.wait_for_selector('#status[data-finished="true"]')
    assert page.is_visible("#result") and page.get_attribute("#final", "src").startswith("data:image/png")

    with page.expect_download() as download_info:
        page.click("#download")
    archive = zipfile.ZipFile(io.BytesIO(Path(download_info.value.path()).read_bytes()))
    run = server.session.run_dir
    assert f"{run.name}/image.png" in archive.namelist()
    result = json.loads((run / "result.json").read_text())
    assert result["reward"] == "human" and result["demon_steps"] == 3 and result["undone"] == 1
    choices = json.loads((run / "choices.json").read_text())
    assert [c["chosen"] for c in choices["choices"]] == [[0, 3], [5], [2, 4]] and choices["finished"]
    assert json.loads(archive.read(f"{run.name}/choices.json")) == choices


def test_a_second_tab_follows_the_first(page, server):
    other = page.context.new_page()
    page.goto(server.url)
    other.goto(server.url)
    other.wait_for_selector('#status[data-step="0"]')
    page.bring_to_front()  # a background tab's rendering is throttled, which slows clicks
    page.wait_for_selector(".candidate")
    _choose(page, [1], step=1)
    other.wait_for_selector('#status[data-step="1"]', timeout=5000)  # its poll picks the change up


def test_a_wrong_token_shows_why(page, server):
    page.goto(server.url.replace("#token=", "#token=x"))
    page.wait_for_selector("#banner:not([hidden])")
    assert "wrong or stale session token" in page.inner_text("#banner-text")
    assert page.locator(".candidate").count() == 0


def test_the_reference_and_its_similarity_show_beside_the_trajectory(page, digits, tmp_path):
    reference, model = save_reference(tmp_path)
    config = DemonConfig(K=4, grid_points=8, beta=DemonConfig().beta_for(digits), lookahead_steps=4)
    session = HumanSession.start(Problem(digits, HumanChoice()), config, seed=1, out=tmp_path / "run",
                                 spec=RunSpec("digits", reference=reference, reference_model=model))
    with UIServer(session) as server:
        page.goto(server.url)
        page.wait_for_selector("#reference-figure:not([hidden])")
        assert page.inner_text("#similarity").startswith("DINOv2 similarity to the reference: ")
        _choose(page, [0, 2], step=1)
        shown = [float(text) for text in page.locator("#trajectory .similarity").all_inner_texts()]
        assert shown == pytest.approx(session.state()["similarities"], abs=1e-3) and len(shown) == 2
