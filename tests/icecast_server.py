"""A real Debian icecast2 on a loopback port, with its own config, for the Icecast source tests."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.serving import free_port, read_stream

ICECAST = shutil.which("icecast2") or "/usr/bin/icecast2"
SOURCE_PASSWORD = "source-secret-1"
ADMIN_PASSWORD = "admin-secret-1"

CONFIG = """<icecast>
  <limits><sources>4</sources><clients>50</clients><source-timeout>10</source-timeout></limits>
  <authentication><source-password>{source}</source-password><admin-user>admin</admin-user>
    <admin-password>{admin}</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <paths><logdir>{folder}</logdir><webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot></paths>
  <logging><errorlog>error.log</errorlog><accesslog>access.log</accesslog><loglevel>3</loglevel></logging>
  {security}
</icecast>
"""
# icecast2 refuses to run as root unless it is told whom to become.
AS_ROOT = "<security><chroot>0</chroot><changeowner><user>nobody</user><group>nogroup</group></changeowner></security>"


@dataclass
class Icecast:
    process: subprocess.Popen
    port: int

    def url(self, mount: str, password: str = SOURCE_PASSWORD) -> str:
        return f"icecast://source:{password}@127.0.0.1:{self.port}{mount}"

    def listen(self, mount: str, seconds: float) -> bytes:
        """What a listener of ``mount`` receives in ``seconds``."""
        return read_stream(self.port, mount, seconds)

    def mounted(self, mount: str) -> bool:
        """Whether a source is live on ``mount`` (from icecast's status page)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/status-json.xsl")
            return f"{self.port}{mount}\"".encode() in connection.getresponse().read()
        except OSError:
            return False
        finally:
            connection.close()

    def kill_source(self, mount: str) -> None:
        """Kick the source off ``mount`` through the admin interface."""
        import base64

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        auth = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        connection.request("GET", f"/admin/killsource?mount={mount}", headers={"Authorization": f"Basic {auth}"})
        assert connection.getresponse().status == 200
        connection.close()


@contextlib.contextmanager
def icecast() -> Iterator[Icecast]:
    """Start icecast2 on a free loopback port; stop it after."""
    assert os.path.exists(ICECAST), "icecast2 is not installed (the Makefile installs it: apt-get install icecast2)"
    port = free_port()
    # Run as root, icecast2 becomes 'nobody', who must reach its log folder: pytest's are private.
    folder = Path(tempfile.mkdtemp(prefix="riffstream-icecast-"))
    folder.chmod(0o777)
    config = folder / "icecast.xml"
    config.write_text(CONFIG.format(source=SOURCE_PASSWORD, admin=ADMIN_PASSWORD, port=port, folder=folder,
                                    security=AS_ROOT if os.geteuid() == 0 else ""))
    output = open(folder / "output.log", "wb")
    process = subprocess.Popen([ICECAST, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (folder / "output.log").read_text(errors="replace")[-2000:]
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/status-json.xsl")
                connection.getresponse().read()
                break
            assert time.monotonic() < deadline, "icecast2 did not start"
            time.sleep(0.1)
        yield Icecast(process, port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()
        shutil.rmtree(folder, ignore_errors=True)
