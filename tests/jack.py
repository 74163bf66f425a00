"""A private JACK server on the dummy driver, and the real command line playing into it while recording what it played.

ALSA's null device swallows audio instantly, so it cannot show what happens when clips come
late. JACK's ``dummy`` driver plays at real-time pace with no hardware: a private ``jackd``
(its own server name, selected with ``JACK_DEFAULT_SERVER``) is started for each test, and
the command plays into it through Debian's PortAudio, whose JACK host API shows the server
as the output device ``system, JACK Audio Connection Kit``.

PortAudio enumerates its host APIs when it initialises, so the playing side is a fresh
process started after jackd is up: the real ``riffstream`` command line, whose ``Player``
is given a source that also records, into a memory-mapped file, every frame the ring
buffer handed to the sound card (real samples, copied after the real ``read_into``).
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

RATE = 44100
#: Longest recording (seconds) the driver keeps of what was played.
RECORD = 120
JACK_DEVICE = "JACK Audio Connection Kit"  # the JACK host API's name: matches only its device

JACKD = shutil.which("jackd")
JACK_WAIT = shutil.which("jack_wait")

#: The real command line, with the sound card's Player recording what it takes from the ring buffer.
DRIVER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from riffstream import cli
    from riffstream.stream import clocks

    samples = np.lib.format.open_memmap(sys.argv[1], mode="w+", dtype=np.float32, shape=(int(sys.argv[2]),))
    # first read, last read of the stream (time.monotonic), frames read, reads, short reads, frame of the first short read
    head = np.lib.format.open_memmap(sys.argv[3], mode="w+", dtype=np.float64, shape=(6,))
    head[5] = -1

    class RecordingSource:
        def __init__(self, source):
            self._source = source

        def __getattr__(self, name):
            return getattr(self._source, name)

        def read_into(self, out):
            copied = self._source.read_into(out)
            now = time.monotonic()
            done = int(head[2])
            keep = max(0, min(copied, len(samples) - done))
            samples[done:done + keep] = out[:keep, 0]
            if head[3] == 0:
                head[0] = now
            if copied < len(out) and not self._source.closed:
                head[4] += 1
                if head[5] < 0:
                    head[5] = done + copied
            # The end of play is the last read that found audio: once the stream has ended and its ring
            # is closed, the card's reads of silence until it is stopped are not play.
            if copied or not self._source.closed:
                head[1] = now
            head[2], head[3] = done + copied, head[3] + 1
            return copied

    # Wrapped in place, so every module that took the Player class plays through the recorder.
    opened = clocks.Player.__init__

    def recording(self, source, *args, **kwargs):
        opened(self, RecordingSource(source), *args, **kwargs)

    clocks.Player.__init__ = recording

    # A model slowed down on purpose: each clip's denoising takes at least this long, however
    # fast the machine, so a test of play slower than real time holds on any machine. The wait
    # is spread over the steps, before each step's own callback, so a stop is seen between
    # steps as it is on a slow machine.
    floor = float(os.environ.get("RIFFSTREAM_TEST_DENOISE_SECONDS", "0"))
    if floor > 0:
        from riffstream.model import RiffusionModel

        denoise = RiffusionModel.denoise

        def slowed(self, *args, on_step=None, **kwargs):
            began = time.monotonic()

            def step(i, total):
                time.sleep(max(0.0, began + floor * (i + 1) / total - time.monotonic()))
                if on_step is not None:
                    on_step(i, total)

            return denoise(self, *args, on_step=step, **kwargs)

        RiffusionModel.denoise = slowed
    sys.argv = ["riffstream", *sys.argv[4:]]
    sys.exit(cli.main())
""")


@pytest.fixture
def jack_server(tmp_path):
    """A private jackd on the dummy driver at 44.1 kHz; yields the environment that selects it."""
    if JACKD is None:
        pytest.skip("jackd is not installed (Debian: apt-get install jackd2; `make test` installs it when run as root)")
    name = f"riffstream-test-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_AUDIO_RESERVATION="1", HF_HUB_OFFLINE="1")
    log = open(tmp_path / "jackd.log", "w+b")
    server = subprocess.Popen([JACKD, "--no-realtime", "--name", name, "-d", "dummy", "-r", str(RATE), "-p", "1024"],
                              env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise AssertionError(f"jackd exited with {server.returncode}: {log.read().decode(errors='replace')}")
            if JACK_WAIT is not None:
                up = subprocess.run([JACK_WAIT, "--server", name, "--check"], env=env, capture_output=True, text=True)
                if up.stdout.strip() == "running":
                    break
            elif glob.glob(f"/dev/shm/jack_{name}_*"):  # the server's shared memory, where jack_wait is missing
                break
            assert time.monotonic() < deadline, "jackd did not come up within 15 s"
            time.sleep(0.1)
        yield env
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        for left in glob.glob(f"/dev/shm/jack*_{name}_*"):  # a killed jackd leaves its shared memory
            os.unlink(left)


def read_head(path):
    """The driver's counters, once it has written them (None before)."""
    try:
        return np.load(path, mmap_mode="r").copy()
    except (OSError, ValueError):
        return None


def play_recorded(folder, env, *args, denoise_seconds: float = 0.0):
    """Start the recording driver on the real command line (``args``), playing into the JACK server of ``env``.

    What it played goes to ``folder/played.npy``; its counters (see ``DRIVER``) to ``folder/head.npy``.
    ``denoise_seconds`` slows the model down: each clip's denoising takes at least that long.
    """
    env = dict(env, RIFFSTREAM_TEST_DENOISE_SECONDS=str(denoise_seconds))
    driver = folder / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen(
        [sys.executable, str(driver), str(folder / "played.npy"), str(RECORD * RATE), str(folder / "head.npy"),
         *args, "--output-device", JACK_DEVICE],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
