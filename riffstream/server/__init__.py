"""`riffstream serve`: the stream on the network, as a page, HTTP audio streams, a JSON API and an Icecast source."""

#: Default ceiling on simultaneous listeners (audio streams plus event streams).
DEFAULT_MAX_LISTENERS = 256
#: Control calls (prompt, settings) each client may make per window (seconds), by default.
CONTROL_CALLS, CONTROL_WINDOW = 20, 10.0
