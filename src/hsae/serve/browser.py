"""Headless Chromium driven over the DevTools protocol, for testing the explorer as a user would.

`hsae.report.browser` opens a static page once and dumps its DOM; the explorer needs clicks,
waits and an upload, so this opens Chromium with `--remote-debugging-pipe` (the DevTools protocol
as NUL-terminated JSON on file descriptors 3 and 4: no websocket library, no port) and sends it
commands: go to a URL, run JavaScript and await its promise, take a screenshot. The browser runs
in its own process group with a throw-away profile, and `close()` ends that group.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from hsae.report.browser import CHROMIUM_FLAGS, find_chromium

# The flags of the report's check, less the DOM dump's virtual time: this page is live.
FLAGS = tuple(f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget"))
# Errors that mean "the page navigated while the script ran": retry on the new page.
NAVIGATED = ("Execution context was destroyed", "Cannot find context", "Inspected target navigated")


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium page: `goto`, `js` (awaits promises), `wait_for`, `screenshot`."""

    def __init__(
        self, exe: str | None = None, window: tuple[int, int] = (1200, 900), timeout: float = 60.0
    ) -> None:
        exe = exe or find_chromium()
        if exe is None:
            raise FileNotFoundError("no Chromium found: install it with `make chromium`")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="hsae-serve-chromium-")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        argv = [exe, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                f"--window-size={window[0]},{window[1]}", "about:blank"]  # fmt: skip
        devnull = os.open(os.devnull, os.O_RDWR)
        # posix_spawn, not Popen(preexec_fn): the test process runs server threads.
        self.pid = os.posix_spawn(
            exe,
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2),
                (os.POSIX_SPAWN_DUP2, cmd_r, 3),
                (os.POSIX_SPAWN_DUP2, out_w, 4),
            ],
            setsid=True,
        )
        for fd in (cmd_r, out_w, devnull):
            os.close(fd)
        self._buf, self._next_id, self.session = b"", 0, ""
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            attach = {"targetId": target, "flatten": True}
            self.session = self.send("Target.attachToTarget", attach)["sessionId"]
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise

    # ----- the protocol ---------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise BrowserError("chromium did not answer in time")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed the DevTools pipe (it crashed or exited)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def send(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """One command; returns its result (events that arrive meanwhile are dropped)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    # ----- what a test does -----------------------------------------------------------------------
    def js(self, expression: str, timeout: float | None = None) -> Any:
        """The value of a JavaScript expression (a promise is awaited); raises on an exception."""
        res = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            text = (d.get("exception") or {}).get("description") or d.get("text")
            raise BrowserError(f"script failed: {text}")
        return res.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def wait_for(self, condition: str, timeout: float | None = None) -> Any:
        """Poll a JavaScript condition until it is truthy (across page loads); return its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        last = ""
        while time.monotonic() < deadline:
            try:
                value = self.js(f"(() => {{ try {{ return ({condition}); }} catch (e) {{ "
                                f"return null; }} }})()", timeout=max(deadline - time.monotonic(),
                                                                      1))  # fmt: skip
            except BrowserError as e:
                if not any(n in str(e) for n in NAVIGATED):
                    raise
                last = str(e)
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise BrowserError(f"timed out waiting for {condition!r} {last}".strip())

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an <input type=file> (what a user's file dialog does)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise BrowserError(f"no element matches {selector!r}")
        files = [str(Path(p).resolve()) for p in paths]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": files})

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        for fd in (self._cmd_w, self._out_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
