"""A local emulation of the Hugging Face hub's HTTP API, for driving the real ``huggingface_hub`` client.

Standard library only (``http.server.ThreadingHTTPServer`` on 127.0.0.1, port 0). It serves what
``huggingface_hub`` (2.x, read from its ``hf_api.py``, ``file_download.py`` and ``utils/_http.py``) asks for
when ``uws manifest lock`` and ``uws download`` run with ``HF_ENDPOINT`` pointing at it:

* ``GET /api/models/{owner}/{name}[/revision/{rev}]`` (``HfApi.model_info``; ``?blobs=True`` adds sizes, git blob
  ids and LFS sha256s to ``siblings``), with ``sha`` and ``gated``;
* ``POST /api/models/{owner}/{name}/paths-info/{rev}`` (``HfApi.get_paths_info``; form field ``paths``);
* ``HEAD`` / ``GET /{owner}/{name}/resolve/{rev}/{path}``: small git files are answered directly (``ETag`` = git
  blob id), LFS files (every ``*.safetensors``, ``*.parquet``, ``*.arrow`` and anything of 10 MiB or more) with a 302 to
  ``http://localhost:{port}/lfs/{sha256}`` (another host name, as the hub's CDN is another host, so the client
  takes the metadata from the redirect itself), carrying ``X-Repo-Commit``, ``X-Linked-Etag`` and
  ``X-Linked-Size``; the LFS host honours ``Range`` (the client resumes a broken transfer with it);
* the same for dataset repositories (``repo_type="dataset"``): ``GET /api/datasets/{owner}/{name}[/revision/{rev}]``
  (``HfApi.dataset_info``), ``POST /api/datasets/.../paths-info/{rev}`` and ``/datasets/{owner}/{name}/resolve/...``;
  a dataset is published with ``commit(..., repo_type="dataset")`` and kept apart from a model of the same id;
* the hub's errors with their ``X-Error-Code``: ``RepoNotFound`` (401, as the hub answers anonymous clients),
  ``GatedRepo`` (401 on file content of a gated repository; its metadata stays readable, as on the hub),
  ``RevisionNotFound`` and ``EntryNotFound`` (404).

Each repository has a git history: :meth:`HubEmulator.commit` adds a commit, ``main`` moves to it, and older
commits stay resolvable by sha. Faults on demand (:meth:`HubEmulator.fault`) per (repo, file): ``drop`` (the
connection closes after half the bytes), ``tamper`` (one byte flipped, same length), ``5xx`` (503); each is
used up by one GET of the file's content. ``requests`` logs (method, path, Range header) of every request.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN = 10 << 20


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


#: stored in LFS whatever their size, as the hub's default ``.gitattributes`` says (an excerpt of its list)
LFS_SUFFIXES = (".safetensors", ".parquet", ".arrow")


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN


@dataclass
class Repo:
    repo_id: str
    gated: bool | str = False
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # oldest first; main = last

    def at(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        if rev in ("main", None, ""):
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == rev), None)


class HubEmulator:
    """Start with ``with HubEmulator() as hub:``; ``hub.url`` is the value for ``HF_ENDPOINT``."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> bytes (the LFS store)
        self.faults: dict[tuple[str, str], list[str]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.mangle_model_info = lambda info: info  # a test may corrupt what model info answers (None: a 503)
        self.mangle_paths_info = lambda entries: entries  # ... and what paths-info answers

    # --------------------------------------------------------------------------------- repositories
    def commit(self, repo_id: str, files: dict[str, bytes], gated: bool | str | None = None,
               replace: bool = False, repo_type: str = "model") -> str:
        """Add a commit to ``repo_id`` (created if new) that sets ``files`` (on top of main unless ``replace``);
        ``main`` moves to it. Returns the new commit sha (40 hex). A dataset is stored under ``datasets/<id>``."""
        with self._lock:
            key = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
            repo = self.repos.setdefault(key, Repo(repo_id))
            if gated is not None:
                repo.gated = gated
            tree = {} if replace or not repo.commits else dict(repo.commits[-1][1])
            tree.update(files)
            parent = repo.commits[-1][0] if repo.commits else ""
            h = hashlib.sha1(parent.encode() + repo_id.encode())
            for name in sorted(tree):
                h.update(name.encode() + b"\0" + hashlib.sha256(tree[name]).digest())
            sha = h.hexdigest()
            repo.commits.append((sha, tree))
            for data in tree.values():
                self.blobs[hashlib.sha256(data).hexdigest()] = data
            return sha

    def fault(self, repo_id: str, path: str, *kinds: str) -> None:
        """Queue faults (``drop``, ``tamper``, ``5xx``) for the next GETs of a file's content."""
        with self._lock:
            self.faults.setdefault((repo_id, path), []).extend(kinds)

    def content_gets(self, path_part: str = "") -> int:
        """GET requests of file content (LFS or git) whose path contains ``path_part``."""
        return sum(1 for m, p, _ in self.requests if m == "GET" and ("/lfs/" in p or "/resolve/" in p)
                   and path_part in p)

    # --------------------------------------------------------------------------------- server
    def __enter__(self) -> "HubEmulator":
        hub = self

        class Handler(_Handler):
            emulator = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


# ``kind`` is "models" or "datasets"; the stored key of a dataset is "datasets/<owner>/<name>"
_MODEL_RE = re.compile(r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_PATHS_RE = re.compile(r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$")
_RESOLVE_RE = re.compile(r"^/(?P<kind>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _key(kind: str | None, repo: str) -> str:
    return f"datasets/{repo}" if kind in ("datasets", "datasets/") else repo
_LFS_RE = re.compile(r"^/lfs/(?P<sha>[0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    emulator: HubEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # --------------------------------------------------------------------------------- helpers
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, obj, headers: dict | None = None) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, head: bool = False, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _repo(self, repo_id: str, rev: str | None, head: bool = False):
        repo = self.emulator.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found", head)
            return None, None
        found = repo.at(unquote(rev) if rev else None)
        if found is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return None, None
        return repo, found

    # --------------------------------------------------------------------------------- verbs
    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.emulator.requests.append((method, path, self.headers.get("Range")))
        head = method == "HEAD"
        if method == "POST" and (m := _PATHS_RE.match(path)):
            return self._paths_info(_key(m["kind"], m["repo"]), m["rev"])
        if method == "GET" and (m := _MODEL_RE.match(path)):
            return self._model_info(_key(m["kind"], m["repo"]), m["rev"], parse_qs(url.query))
        if method in ("GET", "HEAD") and (m := _RESOLVE_RE.match(path)):
            return self._resolve(_key(m["kind"], m["repo"]), m["rev"], m["path"], head)
        if method in ("GET", "HEAD") and (m := _LFS_RE.match(path)):
            return self._lfs(m["sha"], head)
        self._send(404, b"not found", head=head)

    def _model_info(self, repo_id: str, rev: str | None, query: dict) -> None:
        repo, found = self._repo(repo_id, rev)
        if repo is None:
            return
        sha, tree = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for name, data in sorted(tree.items()):
            s = {"rfilename": name}
            if blobs:
                s.update(size=len(data), blobId=git_blob_id(data))
                if is_lfs(name, data):
                    s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(s)
        repo_id = repo.repo_id
        info = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                "gated": repo.gated, "disabled": False, "tags": [], "siblings": siblings}
        info = self.emulator.mangle_model_info(info)
        if info is None:  # a transient outage
            return self._send(503, b"Service Unavailable", {"Content-Type": "text/plain"})
        self._json(info)

    def _paths_info(self, repo_id: str, rev: str) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(n).decode())
        repo, found = self._repo(repo_id, rev)
        if repo is None:
            return
        sha, tree = found
        out = []
        for name in form.get("paths", []):
            if name in tree:
                data = tree[name]
                entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
                if is_lfs(name, data):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                out.append(entry)
        self._json(self.emulator.mangle_paths_info(out))

    def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> None:
        repo, found = self._repo(repo_id, rev, head)
        if repo is None:
            return
        sha, tree = found
        repo_id = repo.repo_id
        if repo.gated:
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to "
                                                 "it and be authenticated to access it. Please log in.", head)
        if name not in tree:
            return self._error(404, "EntryNotFound", f"{name} does not exist on \"{rev}\"", head, commit=sha)
        data = tree[name]
        common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if is_lfs(name, data):
            digest = hashlib.sha256(data).hexdigest()
            location = f"http://localhost:{self.emulator.port}/lfs/{digest}"
            return self._send(302, b"", {**common, "Location": location, "X-Linked-Etag": f'"{digest}"',
                                         "X-Linked-Size": len(data), "ETag": f'"{git_blob_id(data)}"'}, head)
        if head:
            return self._send_head(data, {**common, "ETag": f'"{git_blob_id(data)}"'})
        self._content(data, (repo_id, name), {**common, "ETag": f'"{git_blob_id(data)}"'})

    def _lfs(self, digest: str, head: bool) -> None:
        data = self.emulator.blobs.get(digest)
        if data is None:
            return self._send(404, b"no such blob", head=head)
        if head:
            return self._send_head(data, {"ETag": f'"{digest}"', "Accept-Ranges": "bytes"})
        key = next(((repo.repo_id, n) for repo in self.emulator.repos.values() for _, tree in repo.commits
                    for n, d in tree.items() if hashlib.sha256(d).hexdigest() == digest
                    and (repo.repo_id, n) in self.emulator.faults), None)
        self._content(data, key, {"ETag": f'"{digest}"', "Accept-Ranges": "bytes"})

    def _send_head(self, data: bytes, headers: dict) -> None:
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()

    def _content(self, data: bytes, key, headers: dict) -> None:
        """GET of a file's bytes, with Range and the queued fault of ``key`` (if any)."""
        kind = None
        with self.emulator._lock:
            queue = self.emulator.faults.get(key) if key else None
            if queue:
                kind = queue.pop(0)
        if kind == "5xx":
            return self._send(503, b"Service Unavailable", {"Content-Type": "text/plain"})
        if kind == "tamper":
            data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
        start = 0
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"bytes=(\d+)-", rng)):
            start = min(int(m.group(1)), len(data))
        body = data[start:]
        self.send_response(206 if start else 200)
        for k, v in headers.items():
            self.send_header(k, str(v))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "drop":
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                import socket

                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)
