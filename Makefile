# Set-up lives here so that `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The real Riffusion weights when the Hub or the cache has them; the offline tiny model (noise) otherwise.
ARGS ?= "lofi hip hop to smooth jazz" --duration 15 --no-play --out riff.wav --fallback-model tiny

.PHONY: run check test clean

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	@ldconfig -p 2>/dev/null | grep -q libportaudio || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q libportaudio2 || (apt-get update -q && apt-get install -y -q libportaudio2)) >/dev/null; \
	  else echo "note: install PortAudio (Debian/Ubuntu: sudo apt-get install libportaudio2) for live playback"; fi; }
	@# JACK's dummy driver plays at real-time pace with no sound card: the live-pacing test
	@# needs it. Preseed "no realtime limits" so that jackd2's debconf question never asks.
	@command -v jackd >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "jackd2 jackd/tweak_rt_limits boolean false" | debconf-set-selections 2>/dev/null; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    (apt-get install -y -q --no-install-recommends jackd2 || (apt-get update -q && apt-get install -y -q --no-install-recommends jackd2)) >/dev/null; \
	  else echo "note: install JACK (Debian/Ubuntu: sudo apt-get install jackd2) for the live-pacing test"; fi; }
	@# The serve tests drive Debian's Chromium through Playwright (no browser download) and push
	@# to a real Icecast 2. icecast2's debconf questions are answered by its defaults.
	@{ command -v chromium >/dev/null && command -v icecast2 >/dev/null; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    (apt-get install -y -q --no-install-recommends chromium icecast2 || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium icecast2)) >/dev/null; \
	  else echo "note: install Chromium and Icecast (Debian/Ubuntu: sudo apt-get install chromium icecast2) for the serve tests"; fi; }
	@# --init-midi renders MIDI with FluidSynth and a General MIDI SoundFont.
	@{ command -v fluidsynth >/dev/null && [ -e /usr/share/sounds/sf2/default-GM.sf2 ]; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    (apt-get install -y -q --no-install-recommends fluidsynth fluid-soundfont-gm || (apt-get update -q && apt-get install -y -q --no-install-recommends fluidsynth fluid-soundfont-gm)) >/dev/null; \
	  else echo "note: install FluidSynth (Debian/Ubuntu: sudo apt-get install fluidsynth fluid-soundfont-gm) for --init-midi"; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test]"
	@# Basic Pitch's ONNX model for --midi-out, without the TensorFlow its metadata asks for.
	$(PIP) install -q --no-deps basic-pitch==0.4.0
	touch $@

run: $(VENV)/.installed
	$(PY) -m riffstream $(ARGS)

# The inner loop: every test not marked slow, in about 3 minutes on 2 cores.
check: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" --timeout 300

# Everything (what CI runs): the real-time, whole-program and outside-service tests too,
# with hypothesis's full derandomised runs.
test: $(VENV)/.installed
	$(PY) -m pytest -q --hypothesis-profile=ci

clean:
	rm -rf $(VENV) build *.egg-info .cache/tests
