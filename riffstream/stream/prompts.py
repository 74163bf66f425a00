"""Input typed while the stream plays: each line a prompt (or blend) for the next transition."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from riffstream.errors import RiffstreamError

if TYPE_CHECKING:
    from riffstream.stream.pipeline import Stream


def read_prompts(stream: Stream, fd: int = 0, on_typing: Callable[[str], None] | None = None) -> threading.Thread | None:
    """Queue each line typed on ``fd`` (stdin) as a transition, from a daemon thread.

    Reads the raw descriptor with ``select`` so it never blocks shutdown; a closed,
    missing or finished stdin just ends the thread. Each line sent is also put in
    ``stream.messages`` (``next: 'text'``), so it is shown on a line of its own at once.
    ``on_typing(text)`` gets the line being typed after every keystroke, with backspace
    applied, for a terminal whose own echo is off. Returns the thread, or None when
    ``fd`` cannot be read.
    """
    import os
    import select

    try:
        os.fstat(fd)
    except OSError:
        return None

    def reader() -> None:
        pending = b""
        while not stream.stop_event.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if not ready:
                    continue
                chunk = os.read(fd, 4096)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            pending += chunk.replace(b"\r", b"\n")
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = typed_text(line).strip()
                if text:
                    try:
                        stream.queue_prompt(text)
                        stream.messages.put(f"next: {text!r}")
                    except RiffstreamError as error:
                        stream.messages.put(f"ignored {text!r}: {error}")
            if on_typing is not None:
                on_typing(typed_text(pending))

    thread = threading.Thread(target=reader, name="riffstream-prompts", daemon=True)
    thread.start()
    return thread


def typed_text(keys: bytes) -> str:
    """The text a run of keystrokes leaves: backspace deletes a character, Ctrl-U the whole line."""
    text: list[str] = []
    for char in keys.decode("utf-8", "ignore"):
        if char in "\x7f\b":
            if text:
                text.pop()
        elif char == "\x15":
            text.clear()
        elif char.isprintable():
            text.append(char)
    return "".join(text)
