"""The chat page in a real Chromium, driven by Playwright (README: "What you will see").

One scene, used twice: `demo.py --save-images` photographs it for the README
(`images/chat.png`), and the browser test plays it and then goes on to
restart the server under the open pages. alice and bob chat in two pages,
carol from python-socketio; the last message is HTML, shown as the
characters it is.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import socketio

XSS = "<img src=x onerror=alert(1)>"
WAIT_MS = 10_000  # every wait for the page is bounded by this
CHROMIUM_ARGS = [
    "--no-sandbox",  # Chromium refuses to run as root with its sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CONNECTED = re.compile(r"\bok\b")  # the status pill's class while connected
SCENE_TEXTS = ["hi bob, are you there?", "yes", "hello from a terminal", XSS]


def chromium_path() -> str | None:
    """The system Chromium (`make setup` installs it), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright, executable: str):
    """A headless Chromium for the scene."""
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def open_chat(browser, url: str, name: str, room: str):
    """A new page that joins `room` as `name`; it records dialogs and script errors."""
    page = browser.new_page(viewport={"width": 1100, "height": 620})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    page.js_errors = []  # uncaught exceptions in chat.js
    page.on("pageerror", lambda error: page.js_errors.append(str(error)))
    page.goto(url + "/")
    page.fill("#name", name)
    page.fill("#room", room)
    page.click("#join")
    return page


def play_scene(browser, url: str, room: str = "general") -> tuple:
    """alice and bob in Chromium, carol on python-socketio: four messages, then typing.

    Returns (alice, bob, carol) with bob's page showing alice typing and a
    draft in his box, the moment the README's picture shows. The caller
    disconnects carol.
    """
    from playwright.sync_api import expect

    alice = open_chat(browser, url, "alice", room)
    bob = open_chat(browser, url, "bob", room)
    carol = socketio.Client(reconnection=False)
    carol.connect(url, transports=["websocket"], wait_timeout=WAIT_MS / 1000)
    carol.call("join", {"room": room, "name": "carol"}, timeout=WAIT_MS / 1000)
    for page in (alice, bob):
        expect(page.locator("#status")).to_have_class(CONNECTED)
        expect(page.locator("#members li")).to_have_text(["alice", "bob", "carol"])

    alice.fill("#text", SCENE_TEXTS[0])
    alice.press("#text", "Enter")
    expect(bob.locator("#messages li[data-id] .text")).to_have_text(SCENE_TEXTS[:1])
    expect(alice.locator("#text")).to_have_value("")  # cleared: the server acknowledged it

    bob.locator("#text").press_sequentially(SCENE_TEXTS[1])
    expect(alice.locator("#typing")).to_have_text("bob is typing…")
    bob.press("#text", "Enter")
    expect(alice.locator("#typing")).to_have_text("")
    # Bob's message is stored before Carol speaks: they come over different
    # connections, so without this wait the server may order them either way.
    expect(alice.locator("#messages li[data-id] .text")).to_have_text(SCENE_TEXTS[:2])
    carol.call("message", {"text": SCENE_TEXTS[2]}, timeout=WAIT_MS / 1000)
    expect(alice.locator("#messages li[data-id] .text")).to_have_text(SCENE_TEXTS[:3])
    alice.fill("#text", XSS)
    alice.press("#text", "Enter")
    for page in (alice, bob):
        expect(page.locator("#messages li[data-id] .text")).to_have_text(SCENE_TEXTS)
    alice.locator("#text").press_sequentially("one more")  # for the picture: typing...
    expect(bob.locator("#typing")).to_have_text("alice is typing…")
    bob.fill("#text", "see you")  # ...and something in the box
    return alice, bob, carol


def photograph(page, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
