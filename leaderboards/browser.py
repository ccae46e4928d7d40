"""Open an HTML leaderboard in headless Chromium and report what a reader would see.

Chromium is driven through its DevTools protocol over a pipe (``--remote-debugging-pipe``:
JSON messages ended by NUL bytes on file descriptors 3 and 4, as Puppeteer does), so no
port is opened and no websocket library is needed.  ``inspect_page`` loads a file, waits
for the load event and for every image to decode, and returns a ``PageReport``: the
tables (rows each), the images (decoded size each), the page's errors (exceptions,
console errors, log entries of level error such as Content-Security-Policy violations,
failed loads) and every request that left the page for anything but a ``data:`` URL or
the file itself.  With ``screenshot``, it also writes a full-page PNG.

The browser is Debian's ``chromium`` (``apt-get install chromium``), or any Chrome named
by ``KDBENCH_CHROMIUM``; ``find_chromium`` returns None when there is none.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import KDBenchError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1200  # CSS pixels of the screenshot's viewport
TIMEOUT_S = 60.0

# Runs in the page once it has loaded: wait for every image to decode, then describe it.
_DESCRIBE = """(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map((im) => im.decode().catch(() => null)));
  return {
    title: document.title,
    tables: Array.from(document.querySelectorAll("table")).map((t) => t.rows.length),
    images: images.map((im) => ({alt: im.alt, width: im.naturalWidth,
                                 height: im.naturalHeight})),
    headings: Array.from(document.querySelectorAll("h1, h2")).map((h) => h.textContent),
    text: document.body ? document.body.innerText : "",
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})()"""


class BrowserError(KDBenchError):
    """Chromium is missing, did not start, or did not answer in time."""


@dataclass
class PageReport:
    title: str
    tables: list[int]
    images: list[dict[str, Any]]
    headings: list[str]
    text: str
    height: int
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def broken_images(self) -> list[str]:
        return [im["alt"] for im in self.images if not (im["width"] and im["height"])]


def find_chromium() -> str | None:
    """The Chromium executable: ``KDBENCH_CHROMIUM``, else the first of ``CANDIDATES`` on PATH."""
    chosen = os.environ.get("KDBENCH_CHROMIUM", "").strip()
    if chosen:
        return shutil.which(chosen) or (chosen if Path(chosen).is_file() else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Pipe:
    """One DevTools connection: numbered commands, replies matched by id, events queued."""

    def __init__(self, proc: subprocess.Popen, to_browser, from_browser):
        self.proc, self._out, self._in = proc, to_browser, from_browser
        self._next = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                self._queue.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                self._queue.put(json.loads(raw))

    def _pump(self, deadline: float) -> None:
        try:
            message = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return
        if message is None:
            raise BrowserError("chromium closed its DevTools pipe (it exited)")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while self._next not in self._replies:
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not answer {method} within {TIMEOUT_S:g} s")
            self._pump(deadline)
        reply = self._replies.pop(self._next)
        if "error" in reply:
            raise BrowserError(f"chromium: {method} failed: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(
            e.get("method") == method and e.get("sessionId") == session for e in self.events
        ):
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium: no {method} within {TIMEOUT_S:g} s")
            self._pump(deadline)


def _launch(exe: str, profile: str, log) -> tuple[subprocess.Popen, int, int]:
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    args = [
        "--headless",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-background-networking",
        "--hide-scrollbars",
        "--mute-audio",
        "about:blank",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    # The pipe must be file descriptors 3 (commands in) and 4 (replies out): a shell puts it
    # there and then becomes chromium.
    wrapper = 'exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null'
    proc = subprocess.Popen(
        ["/bin/sh", "-c", wrapper, exe, *args],
        stdin=to_child_r,
        stdout=from_child_w,
        stderr=log,
        start_new_session=True,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, to_child_w, from_child_r


def _problems(events: list[dict], page_url: str) -> tuple[list[str], list[str]]:
    errors, requests = [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('source')}: {entry.get('text')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            why = params.get("blockedReason") or params.get("errorText") or "unknown"
            errors.append(f"load failed: {why}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith("data:") and url != page_url:
                requests.append(url)
    return errors, requests


def inspect_page(
    path: str | os.PathLike, screenshot: str | os.PathLike | None = None
) -> PageReport:
    """Load the HTML file ``path`` in headless Chromium and describe it (module docstring)."""
    exe = find_chromium()
    if exe is None:
        raise BrowserError(
            "no Chromium found (install Debian's `chromium` package, or set KDBENCH_CHROMIUM "
            "to a Chrome executable)"
        )
    page_url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="kdbench-chromium-") as profile:
        log_path = Path(profile) / "chromium.log"
        with open(log_path, "wb") as log:
            proc, to_browser, from_browser = _launch(exe, str(Path(profile) / "profile"), log)
        pipe = _Pipe(proc, to_browser, from_browser)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": 800, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.send("Page.navigate", {"url": page_url}, session=session)
            pipe.wait_for("Page.loadEventFired", session)
            found = pipe.send(
                "Runtime.evaluate",
                {"expression": _DESCRIBE, "awaitPromise": True, "returnByValue": True},
                session=session,
            )
            if "exceptionDetails" in found:
                raise BrowserError(
                    f"chromium: reading the page failed: {found['exceptionDetails']}"
                )
            info = found["result"]["value"]
            if screenshot is not None:
                height = max(int(info["height"]), 1)
                shot = pipe.send(
                    "Page.captureScreenshot",
                    {
                        "format": "png",
                        "captureBeyondViewport": True,
                        "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
                    },
                    session=session,
                )
                out = Path(screenshot)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(base64.b64decode(shot["data"]))
            errors, requests = _problems(pipe.events, page_url)
            try:
                pipe.send("Browser.close")
            except BrowserError:
                pass  # it may close the pipe before answering
        except BrowserError as exc:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise BrowserError(f"{exc}; chromium's log ends: {' | '.join(tail)}") from None
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_browser)
    return PageReport(
        title=info["title"],
        tables=list(info["tables"]),
        images=list(info["images"]),
        headings=list(info["headings"]),
        text=info["text"],
        height=int(info["height"]),
        errors=errors,
        requests=requests,
    )
