"""A page opened in a real headless Chromium (Debian's package) over the DevTools protocol: what its images
loaded, what its console said, and a screenshot. Only the loopback address is used; the flags keep Chromium from
reaching for the network (without them it hangs on a closed network)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
IMAGES = (
    "Array.from(document.images).map(i => ({src: i.src.slice(0, 40), complete: i.complete, width: i.naturalWidth}))"
)


@dataclass
class PageView:
    images: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""


def chromium() -> str:
    """The browser's path; a missing browser fails (CI installs it with scripts/install-node-packages.sh)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run scripts/install-node-packages.sh as root (Debian's chromium)")
    return found


def _port(profile: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"chromium exited with {process.returncode}")
        active = profile / "DevToolsActivePort"
        if active.exists() and active.read_text().strip():
            return int(active.read_text().split()[0])
        time.sleep(0.1)
    raise AssertionError(f"chromium did not open its DevTools port within {timeout}s")


class _Session:
    """Commands over the page's websocket; events (console, exceptions, load) are kept as they arrive."""

    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {method} within {timeout}s")
            self.events.append(json.loads(self.socket.recv()))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            found.append(json.dumps(params["exceptionDetails"])[:300])
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(json.dumps(params.get("args"))[:300])
        elif event.get("method") == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}"[:300])
    return found


def view(page: Path) -> PageView:
    """Open the page, wait for its load event, then read its images, console errors and a screenshot."""
    with tempfile.TemporaryDirectory(prefix="kubecpt-chromium-") as profile:
        process = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port = _port(Path(profile), process)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
                target = next(t for t in json.load(answer) if t["type"] == "page")
            session = _Session(target["webSocketDebuggerUrl"])
            for domain in ("Page", "Runtime", "Log"):
                session.call(f"{domain}.enable")
            session.call(
                "Emulation.setDeviceMetricsOverride", width=1280, height=2000, deviceScaleFactor=1, mobile=False
            )
            session.call("Page.navigate", url=page.resolve().as_uri())
            session.wait_for("Page.loadEventFired")
            images = session.call("Runtime.evaluate", expression=IMAGES, returnByValue=True)["result"]["value"]
            shot = session.call("Page.captureScreenshot", format="png")["data"]
            session.socket.close()
            return PageView(images, _errors(session.events), base64.b64decode(shot))
        finally:
            _end_group(process)


def _end_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop Chromium and every helper it forked (they write into the profile after the browser exits: removing
    the profile under them fails with 'Directory not empty'), and wait until none is left running."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process.poll()
            if not _running_in_group(process.pid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    process.wait(timeout=timeout)


def _running_in_group(group: int) -> bool:
    """Whether a process of this group is still running (zombies, which write nothing, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False
