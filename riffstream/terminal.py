"""The terminal: lines on stderr, the progress line, and prompts typed while an endless stream plays.

Typed keys are read from stdin on the progress line's tick (every tenth of a second, without
blocking), so no thread is needed here: threads live in :mod:`riffstream.stream`. While the
stream plays the terminal passes keys on as typed, without echoing them, and the progress
line shows the line being typed, so typing never lands on the bar.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from tqdm import tqdm

from riffstream.errors import RiffstreamError
from riffstream.stream import Stream


def say(line: str) -> None:
    """One line of news on stderr, as every riffstream line is."""
    print(f"riffstream: {line}", file=sys.stderr, flush=True)


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


class Steerable(Protocol):
    """What typed prompts go to: a :class:`~riffstream.stream.Stream` (or its steering)."""

    def queue_prompt(self, text: str) -> None:
        """Queue a transition to ``text``; a RiffstreamError says why it cannot be."""


class TypedPrompts:
    """Lines typed on ``fd`` (stdin), each queued on the stream as a transition when Enter is pressed.

    :meth:`poll` reads what is there without waiting; a closed, missing or finished stdin ends it.
    ``pending`` is the line being typed, with backspace applied.
    """

    def __init__(self, stream: Steerable, show: Callable[[str], None], fd: int = 0) -> None:
        self.stream, self.show, self.fd = stream, show, fd
        self.pending = ""
        self._keys = b""
        try:
            os.fstat(fd)
            self.open = True
        except OSError:
            self.open = False

    def poll(self) -> None:
        """Take the keys typed since the last call; queue each whole line."""
        while self.open:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0)
                chunk = os.read(self.fd, 4096) if ready else None
            except (OSError, ValueError):
                chunk = b""
            if chunk is None:
                return
            if not chunk:
                self.open = False
                return
            self._keys += chunk.replace(b"\r", b"\n")
            *lines, self._keys = self._keys.split(b"\n")
            for line in lines:
                self._queue(typed_text(line).strip())
            self.pending = typed_text(self._keys)

    def _queue(self, text: str) -> None:
        if not text:
            return
        try:
            self.stream.queue_prompt(text)
            self.show(f"next: {text!r}")
        except RiffstreamError as error:
            self.show(f"ignored {text!r}: {error}")


@contextlib.contextmanager
def keys_without_echo(fd: int) -> Iterator[bool]:
    """While the stream runs, let the terminal pass keys on as typed, without echoing them, so that
    typing never lands on the progress bar's line: the bar shows the line being typed instead.
    Ctrl-C still interrupts. Yields whether ``fd`` is a terminal; the settings are restored after."""
    try:
        import termios

        saved = termios.tcgetattr(fd) if os.isatty(fd) and sys.stderr.isatty() else None
    except (ImportError, OSError):
        saved = None
    if saved is None:
        yield False
        return
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~(termios.ICANON | termios.ECHO)
    quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Terminal:
    """The session's reporter on a terminal: lines on stderr, and a progress line while a stream runs
    (none with ``progress=False``). An endless stream also takes prompts typed on stdin."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress
        self._bar: tqdm | None = None

    def say(self, line: str) -> None:
        """One line of news, above the progress line while there is one."""
        if self._bar is not None:
            self._bar.write(f"riffstream: {line}", file=sys.stderr)
        else:
            say(line)

    @contextlib.contextmanager
    def watch(self, stream: Stream) -> Iterator[Callable[[Stream], None]]:
        """Show the stream's progress while it runs; yields the tick to call as it goes."""
        total = stream.total_clips
        prompts = TypedPrompts(stream, self.say) if total is None else None
        keys = keys_without_echo(0) if total is None and self.progress else contextlib.nullcontext(False)
        bar = tqdm(total=total, unit="clip", file=sys.stderr, disable=not self.progress, dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} clips [{elapsed}<{remaining}{postfix}]" if total
                   else "{desc}{n_fmt} clips [{elapsed}{postfix}]")
        shown = [0.0, ""]

        def tick(running: Stream) -> None:
            if prompts is not None:
                prompts.poll()
            for line in running.take_messages():
                self.say(line)
            status = running.status()
            info = [f"{status.made_seconds:.1f} s audio", f"{status.real_time_factor:.2f}x real time"]
            if status.live:
                info.append(f"{status.ahead_seconds:.1f} s ahead" if status.playing else "buffering")
                if status.underruns:
                    info.append(f"{status.underruns} underruns")
                if status.queued and status.heard_in is not None:
                    info.append(f"next prompt heard in {status.heard_in:.0f} s")
            typing = prompts.pending if prompts is not None else ""
            now = time.monotonic()
            if bar.n != status.clips or now - shown[0] >= 1.0 or typing != shown[1]:
                shown[0], shown[1] = now, typing
                bar.n = status.clips
                bar.set_description_str(f"> {typing} | " if typing else "", refresh=False)
                bar.set_postfix_str(", ".join(info), refresh=False)
                bar.refresh()

        self._bar = bar
        try:
            with keys:
                yield tick
        finally:
            bar.close()
            self._bar = None
            for line in stream.take_messages():
                self.say(line)
