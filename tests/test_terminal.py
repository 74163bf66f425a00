"""The terminal: keys typed on stdin become prompts on the stream's steering, read without a thread."""

from __future__ import annotations

import os

from riffstream.planner import PromptJourney
from riffstream.stream.steering import Steering
from riffstream.terminal import TypedPrompts, typed_text


def _steering() -> Steering:
    """The stream's own steering (what ``Stream.queue_prompt`` hands the prompt to)."""
    return Steering(PromptJourney(["lofi"]), steps=4, negative_prompt=None, total_clips=None, say=print)


def test_backspace_and_ctrl_u_edit_the_line_being_typed():
    assert typed_text(b"jazx\x7fz") == "jazz"
    assert typed_text(b"lofi\x15techno") == "techno"
    assert typed_text("café\b\x01".encode()) == "caf"


def test_each_whole_line_typed_is_queued_and_the_rest_shows_as_pending():
    read, write = os.pipe()
    shown: list[str] = []
    steering = _steering()
    prompts = TypedPrompts(steering, shown.append, fd=read)
    try:
        os.write(write, b"smooth jazz\r  \njazz:0 + lofi\nte")
        prompts.poll()
        assert steering.queued(heard=None) == ["smooth jazz"]
        assert shown[0] == "next: 'smooth jazz'" and shown[1].startswith("ignored 'jazz:0 + lofi': the weight of")
        assert prompts.pending == "te"
        prompts.poll()  # nothing new: returns at once
        os.write(write, b"chno\n")
        prompts.poll()
        assert steering.queued(heard=None) == ["smooth jazz", "techno"] and prompts.pending == ""
    finally:
        os.close(write)
    prompts.poll()
    assert not prompts.open  # the end of stdin ends the reading
    os.close(read)


def test_a_closed_stdin_is_never_read():
    read, write = os.pipe()
    os.close(read)
    os.close(write)
    prompts = TypedPrompts(_steering(), print, fd=read)
    prompts.poll()
    assert not prompts.open
