"""The one exception type the command line turns into a single line of text."""


class RiffstreamError(Exception):
    """A problem the user can fix: bad input, a missing model, an unusable device.

    The CLI prints ``str(error)`` on one line and exits non-zero; anything else that
    escapes is a bug.
    """


class SourceLost(RiffstreamError):
    """Where clips are made has gone away mid-stream (a whole Ray cluster): the stream ends as an interrupted
    one does, keeping every finished clip, and says so in one line."""


class WriteFailed(RiffstreamError):
    """A file could not be written mid-stream (the disk is full, an I/O error): the stream ends as an interrupted
    one does, keeping every finished clip, and says so in one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stop cleanly and keep what was rendered."""
