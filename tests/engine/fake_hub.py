"""A small real HTTP server that answers the Hub endpoints huggingface_hub's downloads use.

``snapshot_download(..., endpoint=hub.url)`` against it really lists, fetches,
hashes and caches files, so the download path is tested end to end with no
network and no mocks. It serves directories from disk as repositories:

    GET  /api/models/{repo}/revision/{rev}      repo info (sha = commit)
    GET  /api/models/{repo}/tree/{rev}          file listing
    HEAD /{repo}/resolve/{rev}/{path}           metadata (X-Repo-Commit, ETag, size)
    GET  /{repo}/resolve/{rev}/{path}           the bytes

A repo may carry several commits; a revision is a branch name ("main") or a
40-hex commit sha. Every request is recorded in ``hub.requests``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class FakeRepo:
    commits: dict[str, Path] = field(default_factory=dict)      # sha -> directory
    branches: dict[str, str] = field(default_factory=dict)      # branch -> sha

    def resolve(self, revision: str) -> tuple[str, Path] | None:
        sha = self.branches.get(revision, revision)
        return (sha, self.commits[sha]) if sha in self.commits else None


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, directory: Path, *, branch: str = "main") -> str:
        """Serve ``directory`` as a new commit of ``repo_id`` on ``branch``; returns the commit sha."""
        repo = self.repos.setdefault(repo_id, FakeRepo())
        sha = _sha(f"{repo_id}:{directory}:{len(repo.commits)}")
        repo.commits[sha] = directory
        repo.branches[branch] = sha
        return sha

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:   # keep test output clean
                pass

            def do_GET(self) -> None:
                hub._route(self, head=False)

            def do_HEAD(self) -> None:
                hub._route(self, head=True)

        return Handler

    # -- routing -----------------------------------------------------------------------------

    def _route(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
            return self._info(h, m[1], m[2])
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path):
            return self._tree(h, m[1], m[2])
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._file(h, m[1], m[2], m[3], head=head)
        self._send(h, 404, {"error": "not found"}, repo_error="RepoNotFound")

    def _lookup(self, h, repo_id: str, revision: str) -> tuple[str, Path] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._send(h, 401, {"error": "Repository not found"}, repo_error="RepoNotFound")
            return None
        found = repo.resolve(revision)
        if found is None:
            self._send(h, 404, {"error": f"Invalid rev id: {revision}"}, repo_error="RevisionNotFound")
        return found

    def _files(self, directory: Path) -> list[Path]:
        return sorted(p for p in directory.rglob("*") if p.is_file())

    def _info(self, h, repo_id: str, revision: str) -> None:
        if found := self._lookup(h, repo_id, revision):
            sha, directory = found
            siblings = [{"rfilename": str(p.relative_to(directory))} for p in self._files(directory)]
            self._send(h, 200, {"id": repo_id, "modelId": repo_id, "sha": sha, "siblings": siblings,
                                "private": False, "tags": [], "downloads": 0, "likes": 0})

    def _tree(self, h, repo_id: str, revision: str) -> None:
        if found := self._lookup(h, repo_id, revision):
            _, directory = found
            entries = [{"type": "file", "path": str(p.relative_to(directory)), "size": p.stat().st_size,
                        "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in self._files(directory)]
            self._send(h, 200, entries)

    def _file(self, h, repo_id: str, revision: str, name: str, *, head: bool) -> None:
        found = self._lookup(h, repo_id, revision)
        if not found:
            return
        sha, directory = found
        target = directory / name
        if not target.is_file():
            return self._send(h, 404, {"error": "Entry not found"}, repo_error="EntryNotFound")
        body = target.read_bytes()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        h.send_header("X-Repo-Commit", sha)
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _send(self, h, status: int, payload, *, repo_error: str | None = None) -> None:
        body = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        if repo_error:
            h.send_header("X-Error-Code", repo_error)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
