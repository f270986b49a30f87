"""The HTML reports in a real headless browser (Debian's chromium + chromedriver, driven
by selenium; no browser is downloaded).

A real dry run and a real verification over local Maildir stores produce the files;
the browser must load them from disk with no console error (the page's
Content-Security-Policy forbids every outside resource, so a load attempt would be
one), sort the mailbox table by a click on a column header (both directions, checked
against the sizes), filter it, and open a mailbox's details from its link.
Screenshots go to the test's tmp dir and to integration/artifacts/ (git-ignored).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from integration.corpus import load_maildir
from integration.report_fixtures import small_corpus
from migrator.cli import app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
COUNTS = [5, 1, 9, 3, 7, 2]  # messages per mailbox m00..m05: sizes in no particular order
HOSTILE = '<b>Tags & "Quotes"'  # a folder name of m00


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)", pytrace=False
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1800", "--no-first-run", "--disable-extensions"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """A dry-run report and a verification report of six Maildir mailboxes."""
    tmp = tmp_path_factory.mktemp("browser")
    boxes = ""
    for k, n in enumerate(COUNTS):
        folders = [("Sent",), (HOSTILE,)] if k == 0 else [("Sent",)]
        load_maildir(small_corpus(f"m{k:02d}", n), tmp / "src" / f"m{k:02d}", folders=folders)
        boxes += f"  - id: m{k:02d}\n    source: {{path: src/m{k:02d}}}\n    destination: {{path: out/m{k:02d}}}\n"
    plan = tmp / "browser.yaml"
    plan.write_text(
        f"""version: 1
name: browser
state: state.db
endpoints:
  src: {{type: maildir}}
  dst: {{type: maildir}}
source: src
destination: dst
mailboxes:
{boxes}""",
        encoding="utf-8",
    )
    runner = CliRunner()
    res = runner.invoke(app, ["plan", str(plan), "--throughput", "10msg/s", "--report", str(tmp / "plan.html")])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["run", str(plan), "-q"]).exit_code == 0
    res = runner.invoke(app, ["verify", str(plan), "--report", str(tmp / "verify.html")])
    assert res.exit_code == 0, res.output
    return {"plan": tmp / "plan.html", "verify": tmp / "verify.html"}


def _open(driver, path: Path) -> list[dict]:
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.as_uri())
    driver.execute_script("return document.readyState")
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def _column(driver, header: str) -> int:
    heads = driver.find_elements("css selector", "#mailbox-table thead th")
    return [h.text.strip().rstrip("↕▲▼ ").strip() for h in heads].index(header)


def _rows(driver, col: int) -> list[tuple[str, str]]:
    """(mailbox id, sort value of column ``col``) of the visible rows, in order."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#mailbox-table tbody tr'))"
        ".filter(r => !r.hidden).map(r => [r.cells[0].textContent, r.cells[arguments[0]].dataset.v]);",
        col,
    )


def _shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    return path


def test_dry_run_report_loads_offline_and_sorts(browser, reports, tmp_path):
    driver = browser
    assert _open(driver, reports["plan"]) == []
    assert driver.title == "Dry run of plan browser"
    # a hostile folder name is shown as text, never as markup
    assert driver.execute_script(
        "return Array.from(document.querySelectorAll('#details td')).some(td => td.textContent === arguments[0])",
        HOSTILE,
    )
    assert driver.execute_script("return document.querySelectorAll('#details td b').length") == 0
    # the summary, both charts, the problem list and one detail block per mailbox are there
    for css in ("#summary .card", "#chart-sizes svg", "#chart-durations svg", "#problems", "details"):
        assert driver.find_elements("css selector", css), css
    assert len(driver.find_elements("css selector", "#chart-sizes svg g.bar")) == len(COUNTS)
    assert len(driver.find_elements("css selector", "details")) == len(COUNTS)

    size = _column(driver, "Size")
    header = driver.find_elements("css selector", "#mailbox-table thead th")[size]
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    rows = _rows(driver, size)
    sizes = [int(v) for _, v in rows]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(COUNTS)
    by_count = [f"m{k:02d}" for k, _ in sorted(enumerate(COUNTS), key=lambda x: x[1])]
    assert [m for m, _ in rows] == by_count  # more messages, more bytes
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert [m for m, _ in _rows(driver, size)] == by_count[::-1]

    mailbox = driver.find_elements("css selector", "#mailbox-table thead th")[_column(driver, "Mailbox")]
    mailbox.click()
    assert [m for m, _ in _rows(driver, 0)] == sorted(f"m{k:02d}" for k in range(len(COUNTS)))

    box = driver.find_element("id", "filter")
    box.send_keys("m03")
    assert [m for m, _ in _rows(driver, 0)] == ["m03"]
    box.send_keys("\b\b\b")
    assert box.get_attribute("value") == ""
    assert len(_rows(driver, 0)) == len(COUNTS)

    driver.find_element("link text", "m02").click()
    assert driver.execute_script("return document.getElementById('mb-2').open") is True
    driver.execute_script("window.scrollTo(0, 0)")
    _shot(driver, tmp_path, "report-dry-run.png")
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_verify_report_loads_offline_and_sorts(browser, reports, tmp_path):
    driver = browser
    assert _open(driver, reports["verify"]) == []
    assert driver.title.startswith("Verification of plan")
    col = _column(driver, "At destination")
    header = driver.find_elements("css selector", "#mailbox-table thead th")[col]
    header.click()
    assert [int(v) for _, v in _rows(driver, col)] == sorted(COUNTS)
    _shot(driver, tmp_path, "report-verify.png")
