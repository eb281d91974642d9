"""Headless Chromium over the DevTools protocol, to open a report as a reader would: what the
console said, what the page asked of the network, values computed in the page, a screenshot.

Debian's `chromium`, run as root (hence `--no-sandbox`) with a new empty profile, no network
of its own (no component updates, sync or QUIC), and driven over its DevTools websocket with
`websocket-client`: no Node.js, no browser download.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import websocket

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)


class BrowserError(Exception):
    """Chromium did not start, or the page did not load, in time."""


@dataclass
class PageLoad:
    """What happened while a page loaded: console errors and uncaught exceptions (with their
    text), and every URL it requested that is not the page's own file or inline data."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def available(binary: str = CHROMIUM) -> bool:
    return Path(binary).exists()


class Chromium:
    """A headless Chromium for one page at a time; a context manager that always stops it.

    Args:
        binary: the executable.
        timeout_s: for start-up, for each DevTools command and for a page's load.
        size: the window's width and height in pixels (the screenshot's width).
    """

    def __init__(
        self, binary: str = CHROMIUM, timeout_s: float = 60.0, size: tuple[int, int] = (1100, 900)
    ) -> None:
        self.binary, self.timeout_s, self.size = binary, timeout_s, size
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile = Path(tempfile.mkdtemp(prefix="cwh-chromium-"))
        self.ws: websocket.WebSocket | None = None
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    def __enter__(self) -> Chromium:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        cmd = [
            self.binary,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}",
            "about:blank",
        ]
        with open(self.profile / "chromium.log", "wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        port = self._devtools_port()
        pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout_s).json()
        url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
        # No Origin header: Chromium refuses websocket clients whose origin it was not told of.
        self.ws = websocket.create_connection(url, timeout=self.timeout_s, suppress_origin=True)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def _devtools_port(self) -> int:
        """Chromium writes the port it chose into the profile once it listens."""
        path = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrowserError(f"chromium exited ({self.proc.returncode}): {self._log()}")
            if path.exists() and (text := path.read_text().split()):
                return int(text[0])
            time.sleep(0.05)
        raise BrowserError(f"chromium did not listen within {self.timeout_s:g} s: {self._log()}")

    def _log(self) -> str:
        path = self.profile / "chromium.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are kept in `events`."""
        assert self.ws is not None, "start() first"
        self._next_id += 1
        ident = self._next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)
        raise BrowserError(f"{method}: no answer within {self.timeout_s:g} s")

    def _wait_event(self, method: str) -> dict[str, Any]:
        assert self.ws is not None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev.get("method") == method:
                    return ev
            self.events.append(json.loads(self.ws.recv()))
        raise BrowserError(f"no {method} within {self.timeout_s:g} s")

    def open(self, path: Path) -> PageLoad:
        """Load a file and wait for its load event; returns what went wrong on the way."""
        self.events.clear()
        url = path.resolve().as_uri()
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")
        self.evaluate("1")  # drains the events the load produced
        return self._page_load(url)

    def _page_load(self, url: str) -> PageLoad:
        out = PageLoad()
        for ev in self.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                out.errors.append(f"exception: {text}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                out.errors.append(f"console.{params['type']}: {args}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.errors.append(f"log: {params['entry'].get('text')}")
            elif method == "Network.requestWillBeSent":
                asked = params.get("request", {}).get("url", "")
                if asked != url and not asked.startswith(("data:", "about:")):
                    out.requests.append(asked)
        return out

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> Path:
        """The whole page (not only the window) as a PNG."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
