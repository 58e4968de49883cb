"""A page rendered in a real headless Chromium, driven over the DevTools protocol on a pipe.

``chromium --remote-debugging-pipe`` reads DevTools commands from its file
descriptor 3 and writes replies and events to 4, each a JSON message ended by
a NUL byte: no websocket, no port, only the standard library (and bash, whose
redirections put the pipe's ends there: dash takes single-digit descriptors only). :func:`render`
opens a page, waits for its load event, and returns what a test checks: the
text a person sees, every console error, uncaught exception and error log
entry (a Content-Security-Policy refusal is one), every request the page made
beyond its own document and every one that failed, plus a screenshot of the
whole page and the page printed to PDF.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",  # as root (CI) the sandbox cannot start; the page is a local file
    "--disable-gpu",
    "--remote-debugging-pipe",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-sync",
    "--mute-audio",
)
WIDTH = 1280


@dataclass
class Rendered:
    """What a person would see of a page, and what went wrong loading it."""

    text: str = ""
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and error log entries."""
    requests: list[str] = field(default_factory=list)
    """Every URL the page asked for besides its own document."""
    failed: list[str] = field(default_factory=list)
    """Every request that failed or was blocked."""
    screenshot: Path | None = None
    pdf: Path | None = None
    pdf_pages: int = 0


class DevTools:
    """One Chromium process and its DevTools pipe."""

    def __init__(self, chromium: str, deadline: float) -> None:
        self.deadline = deadline
        self.profile = tempfile.TemporaryDirectory(prefix="converge-chromium-")
        to_browser, self._writer = os.pipe()
        self._reader, from_browser = os.pipe()
        launch = f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}'
        self.process = subprocess.Popen(
            ["bash", "-c", launch, chromium, *FLAGS, f"--user-data-dir={self.profile.name}"],
            pass_fds=(to_browser, from_browser),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._id = 0

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        """Send a command and wait for its reply, keeping the events that come before it."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def receive(self, wait: bool = True) -> dict[str, Any]:
        """The next message; ``{}`` when ``wait`` is false and none is there."""
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self._reader], [], [], left if wait else 0)
            if not ready:
                return {}
            chunk = os.read(self._reader, 1 << 16)
            assert chunk, f"Chromium ended (exit code {self.process.poll()})"
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(message))

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self.receive())

    def drain(self) -> None:
        while message := self.receive(wait=False):
            self.events.append(message)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (AssertionError, OSError, RuntimeError):
            pass
        finally:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self._writer)
            os.close(self._reader)
            self.profile.cleanup()


def render(chromium: str, page: Path, artefacts: Path, timeout: float = 90.0) -> Rendered:
    """Open ``page`` (a local file), wait for its load, and collect what a test checks; the
    screenshot and PDF go to ``artefacts`` (named after the page)."""
    url = page.resolve().as_uri()
    tools = DevTools(chromium, time.monotonic() + timeout)
    try:
        target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable", session=session)
        tools.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        tools.events.clear()
        tools.call("Page.navigate", {"url": url}, session=session)
        tools.wait_for("Page.loadEventFired")
        said = tools.call(
            "Runtime.evaluate",
            {"expression": "document.body.innerText", "returnByValue": True},
            session=session,
        )
        done = Rendered(text=str(said["result"].get("value", "")))
        artefacts.mkdir(parents=True, exist_ok=True)
        done.screenshot = _screenshot(tools, session, artefacts / f"{page.stem}.png")
        done.pdf, done.pdf_pages = _pdf(tools, session, artefacts / f"{page.stem}.pdf")
        tools.drain()
        _problems(tools.events, url, done)
        return done
    finally:
        tools.close()


def _screenshot(tools: DevTools, session: str, path: Path) -> Path:
    """The whole page, not just the window."""
    size = tools.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": WIDTH, "height": min(size["height"], 30000), "scale": 1}
    shot = tools.call(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True, "clip": clip},
        session=session,
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _pdf(tools: DevTools, session: str, path: Path) -> tuple[Path, int]:
    """The page as printed (its print stylesheet), and how many pages that makes."""
    printed = tools.call("Page.printToPDF", {"printBackground": True}, session=session)
    data = base64.b64decode(printed["data"])
    path.write_bytes(data)
    return path, data.count(b"/Type /Page") - data.count(b"/Type /Pages")


def _problems(events: list[dict[str, Any]], url: str, done: Rendered) -> None:
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
            done.errors.append(" ".join(str(a.get("value")) for a in params.get("args", ())))
        elif method == "Runtime.exceptionThrown":
            done.errors.append(str(params.get("exceptionDetails", {}).get("text")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            done.errors.append(str(params["entry"].get("text")))
        elif method == "Network.requestWillBeSent" and params["request"]["url"] != url:
            done.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            done.failed.append(f"{params.get('errorText')} {params.get('blockedReason', '')}")
