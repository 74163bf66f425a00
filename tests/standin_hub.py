"""A loopback stand-in for the Hugging Face Hub, for tests that drive the real `huggingface_hub` client.

Point the client at it with ``HF_ENDPOINT=<hub.url>`` (read by ``huggingface_hub.constants`` at import
time, so set it before importing the client or in a subprocess). Model repos only; no auth, no Xet.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 1 << 16
LFS_MIN_SIZE = 1 << 20
LFS_SUFFIXES = (".bin", ".safetensors", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".h5")
_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?:/(?P<sub>.*))?)?$"
)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Request:
    """One request the hub answered."""

    method: str
    path: str  # URL path, unquoted
    repo_id: str | None  # set for resolve requests
    file: str | None  # repo file path, set for resolve requests
    range: str | None  # the Range header as sent
    status: int


@dataclass(frozen=True)
class _File:
    disk: Path
    size: int
    blob_id: str  # git blob sha1 (of the LFS pointer for LFS files), as the Hub's blobId/oid
    sha256: str | None  # set for LFS files
    pointer_size: int | None

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


def _digest(h: Any, disk: Path) -> str:
    with disk.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _scan(disk: Path, rel: str) -> _File:
    """Hash a file the way the Hub does: git blob sha1 for plain files, sha256 + LFS pointer for big ones."""
    size = disk.stat().st_size
    if size <= LFS_MIN_SIZE and not rel.endswith(LFS_SUFFIXES):
        return _File(disk, size, _digest(hashlib.sha1(b"blob %d\0" % size), disk), None, None)
    sha256 = _digest(hashlib.sha256(), disk)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    blob_id = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    return _File(disk, size, blob_id, sha256, len(pointer))


@dataclass
class _Repo:
    revisions: dict[str, tuple[str, dict[str, _File]]]  # revision -> (commit sha, files)
    gated: bool = False

    def lookup(self, revision: str) -> tuple[str, dict[str, _File]] | None:
        if revision in self.revisions:
            return self.revisions[revision]
        return next((r for r in self.revisions.values() if r[0] == revision), None)


class StandInHub:
    """Serves folders as Hub model repos on 127.0.0.1 (see module docstring)."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Request] = []
        self._repos: dict[str, _Repo] = {}
        self._drops: dict[tuple[str, str], list[int]] = {}  # (repo, file) -> [nbytes, times left, reset]
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StandInHub:
        """Bind a free port and serve in a daemon thread."""
        Handler = type("Handler", (_Handler,), {"hub": self})
        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="standin-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> StandInHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_repo(self, repo_id: str, folder: Path, *, revision: str = "main", gated: bool = False) -> str:
        """Serve every file under `folder` as `repo_id` at `revision`; returns the (deterministic) commit sha.

        Adding a repo again adds/replaces that revision; `gated` applies to the whole repo.
        """
        rels = [p.relative_to(folder).as_posix() for p in sorted(Path(folder).rglob("*")) if p.is_file()]
        files = {rel: _scan(Path(folder) / rel, rel) for rel in rels}
        h = hashlib.sha1(repo_id.encode())
        for rel, f in sorted(files.items()):
            h.update(f"\0{rel}\0{f.size}\0{f.etag}".encode())
        sha = h.hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo({}))
            repo.revisions[revision] = (sha, files)
            repo.gated = gated
        return sha

    def drop_after(self, repo_id: str, path: str, nbytes: int, times: int = 1, *, reset: bool = False) -> None:
        """Make the next `times` GETs of that file send full headers, then `nbytes` of the body, then hang up.

        `nbytes` counts from the start of the requested range; a shorter range is sent whole (then closed).
        The hang-up is a FIN (httpx: `RemoteProtocolError`, which the client retries), or with `reset=True`
        a TCP RST (httpx: `ReadError`, which the client does not retry).
        """
        with self._lock:
            self._drops[(repo_id, path)] = [nbytes, times, int(reset)]

    def files_requested(self, repo_id: str) -> set[str]:
        """Repo file paths fetched with GET (full or ranged) through resolve."""
        return {r.file for r in self.requests if r.method == "GET" and r.repo_id == repo_id and r.file}

    def hits(self, repo_id: str, path: str, method: str = "GET") -> list[Request]:
        """The resolve requests for one file, in order."""
        return [r for r in self.requests if r.method == method and r.repo_id == repo_id and r.file == path]

    def _take_drop(self, repo_id: str, path: str) -> tuple[int, bool] | None:
        with self._lock:
            drop = self._drops.get((repo_id, path))
            if not drop or drop[1] <= 0:
                return None
            drop[1] -= 1
            return drop[0], bool(drop[2])


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # client hung up etc.: stay quiet
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: StandInHub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def send_response(self, code: int, message: str | None = None) -> None:
        """Record the request before any byte of the answer leaves, so tests never race the log."""
        path = urlsplit(getattr(self, "path", "")).path
        m = _RESOLVE.match(path)
        headers = getattr(self, "headers", None)
        request = Request(self.command, unquote(path), unquote(m["repo"]) if m else None,
                          unquote(m["file"]) if m else None, headers.get("Range") if headers else None, code)
        with self.hub._lock:
            self.hub.requests.append(request)
        super().send_response(code, message)

    def _dispatch(self, head: bool) -> None:
        """Route to the resolve or API handlers."""
        url = urlsplit(self.path)
        if m := _RESOLVE.match(url.path):
            self._resolve(unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]), head)
        elif m := _API.match(url.path):
            rev, sub = unquote(m["rev"] or "main"), unquote(m["sub"] or "")
            self._api(unquote(m["repo"]), m["kind"], rev, sub, parse_qs(url.query))
        else:
            self._error(404, None, "Not Found")

    def _find(self, repo_id: str, revision: str) -> tuple[_Repo, str, dict[str, _File]] | None:
        """The repo, commit sha and files for a revision (branch name or sha), or None after answering 404."""
        repo = self.hub._repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        found = repo.lookup(revision)
        if found is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, *found

    def _api(self, repo_id: str, kind: str | None, revision: str, sub: str, query: dict[str, list[str]]) -> None:
        found = self._find(repo_id, revision)
        if found is None:
            return
        repo, sha, files = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        if kind == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            self._json(self._tree(files, sub.strip("/"), recursive))
            return
        siblings = []
        for rel, f in sorted(files.items()):
            s: dict[str, Any] = {"rfilename": rel}
            if blobs:
                s.update(size=f.size, blobId=f.blob_id)
                if f.sha256:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(s)
        self._json({"_id": sha[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.partition("/")[0],
                    "sha": sha, "private": False, "gated": "auto" if repo.gated else False,
                    "disabled": False, "tags": [], "siblings": siblings})

    @staticmethod
    def _tree(files: dict[str, _File], sub: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{sub}/" if sub else ""
        entries: dict[str, dict[str, Any]] = {}
        for rel, f in sorted(files.items()):
            if not rel.startswith(prefix):
                continue
            parts = rel[len(prefix):].split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):
                d = prefix + "/".join(parts[:i])
                entries.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                       "path": d})
            if recursive or len(parts) == 1:
                e: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": rel}
                if f.sha256:
                    e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
                entries[rel] = e
        return list(entries.values())

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        found = self._find(repo_id, revision)
        if found is None:
            return
        repo, sha, files = found
        if repo.gated:
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                                          "and be authenticated to access it. Please log in.")
            return
        f = files.get(path)
        if f is None:
            self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
            return
        start, end, status = 0, f.size - 1, 200
        if (rng := self.headers.get("Range")) and not head:
            m = _RANGE.match(rng.strip())
            if m and m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else f.size - 1, f.size - 1)
            elif m and m[2]:
                start = max(f.size - int(m[2]), 0)
            if not m or start > end or start >= f.size:
                self._error(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{f.size}"})
                return
            status = 206
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(end - start + 1),
                   "Accept-Ranges": "bytes", "ETag": f'"{f.etag}"', "X-Repo-Commit": sha}
        if f.sha256:  # the Hub's LFS answers carry these (on its redirect); the client prefers them
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        self._send(status, headers)
        if not head:
            self._send_body(f.disk, start, end - start + 1, self.hub._take_drop(repo_id, path))

    def _send_body(self, disk: Path, start: int, length: int, drop: tuple[int, bool] | None) -> None:
        budget = length if drop is None else min(drop[0], length)
        with disk.open("rb") as fh:
            fh.seek(start)
            while budget > 0 and (chunk := fh.read(min(CHUNK, budget))):
                self.wfile.write(chunk)
                budget -= len(chunk)
        if drop is not None:
            self.close_connection = True
            if drop[1]:  # RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
            self.connection.close()

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        """A JSON error; `code` goes in `X-Error-Code`, which the client maps to its exception classes."""
        headers = {"X-Error-Code": code, "X-Error-Message": message} if code else {}
        self._send(status, {**headers, **(extra or {})}, json.dumps({"error": message}).encode())

    def _json(self, payload: Any) -> None:
        self._send(200, {}, json.dumps(payload).encode())

    def _send(self, status: int, headers: dict[str, str], body: bytes | None = None) -> None:
        """Status and headers, plus `body` (JSON) unless it is None or the request is a HEAD."""
        self.send_response(status)
        if body is not None:
            headers = {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(body)), **headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body is not None and self.command != "HEAD":
            self.wfile.write(body)
