"""A real headless Chromium for the tests, driven over the DevTools protocol.

The protocol's websocket is spoken with aiohttp (a dependency of the product already), so no
browser-automation package is needed: only Debian's ``chromium`` (``make chromium`` installs it).
:func:`headless_chromium` starts one browser with a fresh profile in a temp folder and yields its
first tab as a :class:`Tab`; on exit the browser's whole process group is stopped (SIGKILL after a
grace period) and the profile folder removed, also when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from pipeline.ops.processes import group_members

CHROMIUM_INSTALL = "apt-get install -y --no-install-recommends chromium  (or: make chromium)"
# Flags that keep a headless browser quiet and self-contained; --no-sandbox only where we are root
# (Chromium refuses to start its sandbox as root).
_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
    "--window-size=1400,1000",
)

_SCRATCH_ENV = ("TMPDIR", "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME")


class BrowserError(RuntimeError):
    """The browser did not start, a protocol call failed, or a page did not get where it should."""


def chromium_binary() -> str:
    """Path of ``chromium``; BrowserError naming the install command when it is not installed."""
    found = shutil.which("chromium")
    if found is None:
        raise BrowserError(f"chromium is not installed; install it with: {CHROMIUM_INSTALL}")
    return found


def shows(text: str) -> str:
    """JavaScript: whether the page's rendered text contains ``text`` (false while it has no body)."""
    return f"(document.body ? document.body.innerText : '').includes({json.dumps(text)})"


class Tab:
    """One browser tab: navigate, read the page, type and click as a user does.

    Every call is bounded by ``call_timeout_s``; a protocol error raises BrowserError.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, call_timeout_s: float) -> None:
        self._ws = ws
        self._timeout = call_timeout_s
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        """Route each reply to its caller; events are not needed. When the socket ends, every call
        still waiting fails (none waits forever on a dead browser)."""
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                reply = json.loads(message.data)
                waiter = self._waiting.pop(reply.get("id", -1), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(BrowserError("the DevTools connection closed"))
            self._waiting.clear()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools protocol ``method``; its result, or BrowserError with the protocol's error."""
        if self._reader.done():
            raise BrowserError(f"{method}: the DevTools connection is closed")
        call_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = waiter
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        try:
            async with asyncio.timeout(self._timeout):
                reply = await waiter
        except TimeoutError as exc:
            raise BrowserError(f"{method}: no reply within {self._timeout:.0f}s") from exc
        finally:
            self._waiting.pop(call_id, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def navigate(self, url: str) -> None:
        reply = await self.send("Page.navigate", url=url)
        if reply.get("errorText"):
            raise BrowserError(f"navigating to {url}: {reply['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def text(self) -> str:
        """What the page shows: the body's rendered text."""
        return str(await self.evaluate("document.body ? document.body.innerText : ''"))

    async def wait_for(self, expression: str, timeout_s: float, what: str) -> Any:
        """The first truthy value of ``expression``, polled until ``timeout_s``; BrowserError with
        the page's text when it stays falsy.  While a page loads or reloads the expression may
        throw (no body yet, its context destroyed): that counts as not yet, and the last such
        error is in the message."""
        deadline, thrown = time.monotonic() + timeout_s, None
        while True:
            try:
                value = await self.evaluate(expression)
            except BrowserError as exc:
                value, thrown = None, exc
            if value:
                return value
            if time.monotonic() > deadline:
                shown = (await self.text())[:2000]
                raise BrowserError(
                    f"{what}: not within {timeout_s:.0f}s (last error: {thrown}); the page shows:\n{shown}"
                )
            await asyncio.sleep(0.25)

    async def shows(self, text: str) -> bool:
        """Whether the page's rendered text contains ``text``."""
        return bool(await self.evaluate(shows(text)))

    async def click(self, selector: str) -> None:
        """A mouse click (press and release) on the middle of the first element matching ``selector``."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        if box is None:
            raise BrowserError(f"nothing to click: no element matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1
            )

    async def type_text(self, text: str) -> None:
        """Type ``text`` into the focused element, replacing its selection (as a paste would)."""
        await self.send("Input.insertText", text=text)

    async def select_all(self) -> None:
        """Ctrl+A in the focused element, so that the next typing replaces what it holds."""
        for kind in ("rawKeyDown", "keyUp"):
            await self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key="a",
                code="KeyA",
                windowsVirtualKeyCode=65,
                modifiers=2,  # Ctrl
                commands=["selectAll"] if kind == "rawKeyDown" else [],
            )

    async def cookies(self) -> dict[str, str]:
        """Name -> value of the cookies the browser holds for the current page (HttpOnly ones too)."""
        reply = await self.send("Network.getCookies")
        return {c["name"]: c["value"] for c in reply["cookies"]}


async def _devtools_port(profile: Path, browser: subprocess.Popen[bytes], log: Path, timeout_s: float) -> int:
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while not (active.is_file() and active.read_text().strip()):
        if browser.poll() is not None:
            raise BrowserError(f"chromium exited with {browser.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise BrowserError(
                f"chromium opened no DevTools port in {timeout_s:.0f}s:\n{log.read_text()[-3000:]}"
            )
        await asyncio.sleep(0.1)
    return int(active.read_text().split()[0])


def _processes_of(profile: Path) -> list[int]:
    """Pids of the processes whose command line names ``profile``: the browser's own, and the crash
    handlers it starts in sessions of their own (outside its process group)."""
    marker, found = os.fsencode(profile), []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _stop(browser: subprocess.Popen[bytes], profile: Path, grace_s: float = 10.0) -> None:
    """Stop the browser's process group (renderers, zygotes, GPU and network processes), then
    whatever else runs on ``profile``; SIGKILL after ``grace_s``.  BrowserError if any survives."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (group_members(browser.pid) or _processes_of(profile)) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGKILL)
    for pid in _processes_of(profile):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    browser.wait(grace_s)
    time.sleep(0.2)  # SIGKILL is delivered at once, but /proc shows the process until it is gone
    left = [pid for pid, _ in group_members(browser.pid)] + _processes_of(profile)
    if left:
        raise BrowserError(f"chromium processes {sorted(set(left))} outlived SIGKILL")


@contextlib.asynccontextmanager
async def headless_chromium(
    start_timeout_s: float = 60.0, call_timeout_s: float = 30.0
) -> AsyncIterator[Tab]:
    """A fresh headless Chromium (empty profile: no cookies, no storage) and its first tab.

    BrowserError when chromium is missing (with the install command) or does not start.  The browser
    and its profile folder are gone when this exits.
    """
    binary = chromium_binary()
    profile = Path(tempfile.mkdtemp(prefix="embedstream-chromium-"))
    log = profile / "chromium.log"
    (profile / "tmp").mkdir()
    flags = [*_FLAGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    browser = None
    try:
        with log.open("wb") as sink:
            browser = subprocess.Popen(
                [binary, *flags, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # Its shared-memory files, crash-report database and caches go under the profile,
                # removed below: in /tmp or ~/.config they would outlive the browser.
                env=os.environ | {name: str(profile / "tmp") for name in _SCRATCH_ENV},
                start_new_session=True,  # its own process group: stopped as a whole
            )
        port = await _devtools_port(profile, browser, log, start_timeout_s)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=call_timeout_s)) as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
                targets = await reply.json()
            page = next((t for t in targets if t.get("type") == "page"), None)
            if page is None:
                raise BrowserError(f"chromium has no tab to drive: {targets}")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Tab(ws, call_timeout_s)
                try:
                    for domain in ("Page", "Runtime", "Network"):
                        await tab.send(f"{domain}.enable")
                    yield tab
                finally:
                    await tab.close()
    finally:
        try:
            if browser is not None:
                _stop(browser, profile)
        finally:
            shutil.rmtree(profile)
