"""The sound card as PortAudio sees it: its devices, checked before anything loads.

Playing on it is a clock of the stream's (:class:`riffstream.stream.clocks.Player`)."""

from __future__ import annotations

from riffstream.errors import RiffstreamError

#: Frames per audio callback: about 23 ms at 44.1 kHz.
BLOCK_FRAMES = 1024
NO_DEVICE_HINT = "use --out FILE --no-play to render to a file instead"


def sounddevice_module():
    """The sounddevice module, or a one-line error when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as error:
        raise RiffstreamError(f"cannot play audio: PortAudio is not installed ({error}); {NO_DEVICE_HINT}") from None
    return sounddevice


def device_id(device: str | None) -> int | str | None:
    """A device as PortAudio takes it: its number, or its name."""
    return int(device) if device is not None and device.strip().isdigit() else device


def list_devices() -> str:
    """The audio devices PortAudio sees, one per line (``>`` marks the default output)."""
    sd = sounddevice_module()
    return str(sd.query_devices())


def check_output_device(device: str | None = None) -> str:
    """Fail early, with one line, when there is no usable output device; returns its name."""
    sd = sounddevice_module()
    try:
        info = sd.query_devices(device_id(device), kind="output")
    except (sd.PortAudioError, ValueError) as error:
        which = f"audio output device {device!r}" if device is not None else "audio output device"
        raise RiffstreamError(f"no {which} ({error}); {NO_DEVICE_HINT}, or pick one from --list-devices") from None
    if info["max_output_channels"] < 1:
        raise RiffstreamError(f"{info['name']} has no output channels; {NO_DEVICE_HINT}")
    return str(info["name"])
