"""Every experiment end to end on a tiny config through the CLI, and the reports in a real browser.

The browser check drives Debian's headless Chromium over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: NUL-separated JSON on fds 3 and 4), so it needs no extra package.
It loads each page from disk, then asserts that every <img> decoded with a non-zero natural size,
that the console logged no error and no exception was thrown, and that nothing was requested
from outside the run directories; it also saves a full-page screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.experiments import EXPERIMENTS
from resnetlab.experiments.demo import DemoResult, summary_text
from resnetlab.experiments.record import Outcome, RunRecord

COMMON = ["--device", "cpu", "--seed", "3"]
TRAIN = ["--steps", "3", "--batch-size", "16", "--train-subset", "96", "--amp", "none"]
TINY: dict[str, list[str]] = {
    "degradation": [*TRAIN, "--depths", "8,14", "--seeds", "2", "--test-examples", "64", "--log-points", "3"],
    "gradients": [*TRAIN, "--depths", "8,14", "--norms", "bn,none", "--measure-batch", "16"],
    "responses": [
        *TRAIN, "--plain-depths", "8", "--resnet-depths", "8,14", "--test-examples", "64", "--workers", "1",
    ],
    "lesion": [*TRAIN, "--depth", "14", "--test-examples", "64", "--draws", "2"],
    "landscape": [*TRAIN, "--depth", "8", "--points-1d", "5", "--points-2d", "3", "--loss-examples", "32"],
    "shattered": ["--depths", "8,14", "--points", "32", "--lines", "2", "--max-lag", "4"],
    "transfer": [
        "--pretrain-steps", "3", "--pretrain-per-class", "16", "--shots", "2,6", "--steps", "2",
        "--batch-size", "8", "--seeds", "1", "--methods", "scratch,partial", "--amp", "none",
        "--workers", "1",
    ],
    "mlp": [
        "--depths", "1,2", "--width", "8", "--seeds", "1", "--steps", "3", "--batch-size", "8",
        "--train-subset", "64", "--test-examples", "64", "--measure-batch", "8", "--workers", "1",
    ],
    "information": [
        *TRAIN, "--depths", "8,14", "--seeds", "1", "--fit-examples", "24", "--test-examples", "16",
        "--workers", "1",
    ],
    "identity": [
        "--shallow-steps", "3", "--steps", "2", "--seeds", "1", "--train-subset", "96",
        "--eval-examples", "32", "--log-points", "2", "--workers", "1",
    ],
    "backbone": [
        "--tasks", "segment,detect", "--depths", "8", "--canvas", "32", "--steps", "2", "--batch-size", "4",
        "--test-scenes", "8", "--figure-scenes", "2", "--amp", "none", "--workers", "1",
    ],
    "transformer": [
        "--depths", "1,2", "--width", "8", "--n-head", "2", "--context", "8", "--seeds", "1", "--steps", "3",
        "--batch-size", "4", "--eval-windows", "4", "--measure-batch", "4", "--workers", "1",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, flags in TINY.items():
        out[name] = root / name
        assert main(["experiment", name, *COMMON, *flags, "--out", str(out[name])]) == 0
    assert main(["report", str(root), "--out", str(root / "all.html")]) == 0
    return out


def test_tiny_configs_cover_every_experiment() -> None:
    assert set(TINY) == set(EXPERIMENTS)


@pytest.mark.parametrize("name", list(TINY))
def test_run_directory_holds_results_figures_and_report(runs: dict[str, Path], name: str) -> None:
    run = runs[name]
    record = RunRecord.load(run)
    assert record.experiment == name and record.outcome.findings and record.outcome.tables
    assert record.config["seed"] == 3 and record.config["device"] == "cpu"
    assert (
        record.command.startswith(f"resnetlab experiment {name} --preset quick")
        and "--seed 3" in record.command
    )
    assert record.provenance["resnetlab"] and record.provenance["commit"]
    assert record.outcome.figures
    for fig in record.outcome.figures:
        with Image.open(run / fig.file) as img:
            assert img.format == "PNG" and min(img.size) > 100
    page = (run / "report.html").read_text()
    assert all(f'src="{fig.file}"' in page for fig in record.outcome.figures)
    # results.json holds every plotted number, as plain JSON
    assert json.loads((run / "results.json").read_text())["outcome"]["results"]


def test_reruns_with_the_same_seed_give_the_same_numbers(runs: dict[str, Path], tmp_path: Path) -> None:
    for name in ("degradation", "gradients", "shattered"):
        again = tmp_path / name
        assert main(["experiment", name, *COMMON, *TINY[name], "--out", str(again)]) == 0
        first, second = (without_timings(RunRecord.load(d).outcome) for d in (runs[name], again))
        assert first.results == second.results and first.findings == second.findings


def without_timings(outcome: Outcome) -> Outcome:
    """The outcome minus wall-clock seconds, the one thing a rerun may change."""
    for run in outcome.results.get("runs", []):
        run.pop("seconds")
    return outcome


def test_existing_run_directory_is_not_overwritten(
    runs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(["experiment", "shattered", *COMMON, *TINY["shattered"], "--out", str(runs["shattered"])]) == 2
    )
    assert "already holds a run" in capsys.readouterr().err


def test_demo_summary_prints_the_headline_table(runs: dict[str, Path]) -> None:
    deg, grad = RunRecord.load(runs["degradation"]), RunRecord.load(runs["gradients"])
    text = summary_text(DemoResult(runs["degradation"] / "report.html", deg, grad, 61.0))
    assert text.startswith(deg.outcome.tables[0].title) and "train error" in text and "test error" in text
    for net in ("plain-8", "plain-14", "resnet-8", "resnet-14"):
        assert net in text
    assert f"report: {runs['degradation'] / 'report.html'}" in text and "took 1.0 min" in text


# ---------------------------------------------------------------- the browser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def above_4(fd: int) -> int:
    """`fd` moved to a number above 4, so that moving it to 3 or 4 cannot clobber the other."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 5)
    os.close(fd)
    return moved


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe."""

    def __init__(self, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        to_child_r, from_child_w = (above_4(fd) for fd in (to_child_r, from_child_w))

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]  # fmt: skip
        # The pipe protocol reads descriptors 3 and 4. A fresh interpreter moves them there and
        # execs Chromium: a preexec_fn would run Python between fork and exec, which can deadlock
        # in a threaded process (the xdist worker is one) and leave Popen waiting forever.
        move = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
            "os.execv(sys.argv[3], sys.argv[3:])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", move, str(to_child_r), str(from_child_w), CHROMIUM, *flags],
            pass_fds=(to_child_r, from_child_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer, self._id, self.events = b"", 0, []

    def _receive(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next DevTools message; a browser silent for `timeout` s fails the test, not CI."""
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_child], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(f"chromium sent nothing for {timeout:g} s")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive())

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self._to_child)
            os.close(self._from_child)


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium, or `make browser`)")
    with tempfile.TemporaryDirectory() as profile:
        chrome = Chromium(Path(profile))
        try:
            yield chrome
        finally:
            chrome.close()


def open_page(chrome: Chromium, page: Path, screenshot: Path) -> dict[str, Any]:
    """Load `page` in a fresh tab; return its images, console errors and requested URLs."""
    target = chrome.send("Target.createTarget", url="about:blank")["targetId"]
    session = chrome.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    chrome.events.clear()
    for domain in ("Page", "Runtime", "Log", "Network"):
        chrome.send(f"{domain}.enable", session)
    chrome.send("Page.navigate", session, url=page.resolve().as_uri())
    chrome.wait_for("Page.loadEventFired")
    images = chrome.send(
        "Runtime.evaluate",
        session,
        expression="JSON.stringify([...document.images].map(i => [i.getAttribute('src'), i.complete,"
        " i.naturalWidth, i.naturalHeight]))",
        returnByValue=True,
    )["result"]["value"]
    shot = chrome.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    chrome.send("Target.closeTarget", targetId=target)
    mine = [e for e in chrome.events if e.get("sessionId") == session]
    errors = [e["params"] for e in mine if e["method"] == "Runtime.exceptionThrown"]
    errors += [
        e["params"]
        for e in mine
        if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    errors += [
        e["params"]
        for e in mine
        if e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error"
    ]
    urls = [e["params"]["request"]["url"] for e in mine if e["method"] == "Network.requestWillBeSent"]
    return {"images": json.loads(images), "errors": errors, "urls": urls}


def test_reports_open_in_chromium_with_every_figure(
    runs: dict[str, Path], browser: Chromium, tmp_path: Path
) -> None:
    pages = [next(iter(runs.values())).parent / "all.html"] + [run / "report.html" for run in runs.values()]
    for page in pages:
        seen = open_page(browser, page, tmp_path / f"{page.parent.name}-{page.stem}.png")
        expected = page.read_text().count("<img ")
        assert len(seen["images"]) == expected > 0, page
        for src, complete, width, height in seen["images"]:
            assert complete and width > 0 and height > 0, f"{page}: figure {src} did not load"
        assert seen["errors"] == [], f"{page}: console errors {seen['errors']}"
        assert all(u.startswith("file://") for u in seen["urls"]), f"{page}: network requests {seen['urls']}"
        with Image.open(tmp_path / f"{page.parent.name}-{page.stem}.png") as shot:
            assert shot.size[0] > 0 and shot.size[1] > 600  # the full page, figures included


def test_browser_check_catches_a_missing_figure(
    runs: dict[str, Path], browser: Chromium, tmp_path: Path
) -> None:
    """The check above can fail: a page whose figure is gone reports it."""
    broken = tmp_path / "broken"
    shutil.copytree(runs["shattered"], broken)
    (broken / "lag1_vs_depth.png").unlink()
    seen = open_page(browser, broken / "report.html", tmp_path / "broken.png")
    loaded = {src: width for src, _, width, _ in seen["images"]}
    assert loaded["lag1_vs_depth.png"] == 0 and loaded["autocorrelation.png"] > 0
    assert any("ERR_FILE_NOT_FOUND" in json.dumps(e) for e in seen["errors"])
