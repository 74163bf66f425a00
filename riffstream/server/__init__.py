"""`riffstream serve`: the stream on the network, as a page, HTTP audio streams, a JSON API and an Icecast source.

* :mod:`~riffstream.server.station`: the :class:`Station`, one running stream and its broadcast
  told to many listeners (a cursor each, slow ones dropped), its events and status;
* :mod:`~riffstream.server.routes`: the HTTP face: the page, ``/stream.mp3``, ``/stream.ogg``, the
  JSON API, bounded inputs and the control token;
* :mod:`~riffstream.server.serve`: where it serves, the socket, and :func:`serve`, which runs it
  behind uvicorn until a signal;
* :mod:`~riffstream.server.icecast`: the Icecast source.

Importing this package needs none of the server extra's libraries; its modules do.
"""

#: Default ceiling on simultaneous listeners (audio streams plus event streams).
DEFAULT_MAX_LISTENERS = 256
#: Control calls (prompt, settings) each client may make per window (seconds), by default.
CONTROL_CALLS, CONTROL_WINDOW = 20, 10.0
