"""report.html in a real browser: headless Chromium driven by playwright.

The page must load with no console error, make no request outside its own file, and
show every image (``naturalWidth > 0``). Chromium is Debian's ``chromium`` package
(never ``playwright install``: the test machine has no internet); ``.ci/run``
installs it and sets ``KERASTL_REQUIRE_BROWSER=1``, which turns a missing browser
into a failure instead of a skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

import kerastl
from kerastl.commands.evaluate import evaluate_main
from kerastl.data.samples import data_samples_dir, source_backbone

SAMPLES = data_samples_dir() / "fashion"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _chromium() -> str:
    found = next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        message = "needs the chromium package and the playwright Python package"
        if os.environ.get("KERASTL_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    source = source_backbone()
    root = tmp_path_factory.mktemp("report")
    result = kerastl.fit(kerastl.RunConfig(
        data=str(SAMPLES / "train"), val_data=str(SAMPLES / "val"),
        backbone=source["backbone"], backbone_kwargs=source["backbone_kwargs"],
        weights=source["weights"], image_size=64, mode="finetune", unfreeze_blocks=1,
        epochs=2, head_epochs=1, augment=[], verbose=0, seed=0, precision="float32",
        output=str(root / "run")))
    evaluation = root / "evaluation"
    assert evaluate_main([str(result.output_dir / "model.keras"), str(SAMPLES / "test"),
                          "--output", str(evaluation)]) == 0
    return {"run": result.output_dir / "report.html", "evaluation": evaluation / "report.html"}


@pytest.mark.parametrize("kind", ["run", "evaluation"])
def test_report_opens_offline_with_every_image_and_no_error(reports, kind):
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    page_url = reports[kind].resolve().as_uri()
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable,
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_url, wait_until="load")
            images = page.eval_on_selector_all(
                "img", "all => all.map(i => [i.alt, i.complete, i.naturalWidth])")
            headings = page.eval_on_selector_all("h2", "all => all.map(h => h.textContent)")
        finally:
            browser.close()
    assert errors == []
    assert [url for url in requests if url != page_url and not url.startswith("data:")] == []
    assert len(images) == (3 if kind == "run" else 2)  # curves only in a run's report
    assert all(complete and width > 0 for _, complete, width in images), images
    expected = {"Confusion matrix", "Per-class metrics", "Most-confused pairs", "Versions",
                "Configuration", "Unfreeze plan", "What kerastl chose, and why",
                "Timings (seconds)"}
    if kind == "evaluation":  # the run's plan and choices, from its run.json
        expected.add("The run that trained this model")
    assert expected <= set(headings)
