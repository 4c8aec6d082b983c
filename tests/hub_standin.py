"""A local STAND-IN for the Hugging Face Hub's REST API, for tests only: no hub is reachable
here. It is not the Hub and implements only what `huggingface_hub.HfApi` calls to publish a
dataset (the endpoint shapes read from huggingface_hub's own source, hf_api.py and
_commit_api.py):

- `POST /api/repos/create` (409 with the repo's url when it exists; a new repo holds a
  `.gitattributes`, as on the Hub),
- `GET /api/datasets/{repo}` and `.../revision/{rev}` (repo_info),
- `GET /api/datasets/{repo}/tree/{rev}[/{path}]?recursive=...` (files with `oid` = git blob id;
  `*.parquet` and `*.png` listed as LFS files with `lfs: {oid: sha256, size, pointerSize}` and
  the oid of their pointer, as the Hub lists them),
- `POST /api/datasets/{repo}/preupload/{rev}` (every file "regular": its content then comes
  inline, base64, in the commit; no LFS / Xet upload is needed),
- `POST /api/validate-yaml` (the card's YAML must parse),
- `POST /api/datasets/{repo}/commit/{rev}` (NDJSON: header, file, deletedFile, deletedFolder),
- `GET /datasets/{repo}/resolve/{rev}/{path}` (a file's bytes).

Writes need `Authorization: Bearer <token>`; every Authorization header received is kept in
memory only (`authorizations`), never written to the storage folder. Stored files go under
`root/<org>/<name>/`, the commit log to `root/commits.json`. `fail(...)` makes chosen requests
fail (an HTTP status, a dropped connection, or a commit made whose answer is lost) to test
retries and interrupted uploads."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_SUFFIXES = (".parquet", ".png")
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass
class Fault:
    endpoint: str  # "commit", "preupload", "tree", "create"
    after: int  # let this many matching requests pass first
    mode: str  # an HTTP status ("500", "403"), "drop" (close the connection, no answer) or "lost"
    # (commit only: the commit is made, then the connection closes: its answer is lost)
    times: int  # then fail this many
    seen: int = 0


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    head: str = "0" * 40


class HubStandIn:
    """The stand-in server on a free loopback port; use as a context manager."""

    def __init__(self, root: Path, token: Optional[str] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token  # the token writes must carry (any bearer token if None)
        self.repos: dict[str, Repo] = {}
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.authorizations: list[str] = []  # every Authorization header received (memory only)
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, endpoint: str, mode: str = "500", after: int = 0, times: int = 1) -> None:
        """Fail `times` requests to `endpoint` after letting `after` through."""
        self.faults.append(Fault(endpoint, after, mode, times))

    def commits_of(self, repo_id: str) -> list[dict[str, Any]]:
        return [c for c in self.commits if c["repo"] == repo_id]

    def _fault(self, endpoint: str) -> Optional[str]:
        with self.lock:
            for f in self.faults:
                if f.endpoint == endpoint:
                    f.seen += 1
                    if f.after < f.seen <= f.after + f.times:
                        return f.mode
        return None

    def _store(self, repo: Repo) -> None:
        base = self.root / repo.repo_id
        for p in sorted(base.rglob("*"), reverse=True) if base.exists() else []:
            if p.is_file() and p.relative_to(base).as_posix() not in repo.files:
                p.unlink()
        for path, data in repo.files.items():
            (base / path).parent.mkdir(parents=True, exist_ok=True)
            (base / path).write_bytes(data)
        (self.root / "commits.json").write_text(json.dumps(self.commits, indent=1), encoding="utf-8")

    def tree(self, repo: Repo, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        out, dirs = [], set()
        for path in sorted(repo.files):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            rest = path[len(prefix.rstrip("/")) + 1:] if prefix else path
            parts = rest.split("/")
            base = prefix.rstrip("/") + "/" if prefix else ""
            for i in range(1, len(parts)):
                d = base + "/".join(parts[:i])
                if d not in dirs and (recursive or i == 1):
                    dirs.add(d)
                    out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
            if not recursive and len(parts) > 1:
                continue
            data = repo.files[path]
            if path.endswith(LFS_SUFFIXES):
                ptr = lfs_pointer(data)
                out.append({"type": "file", "oid": git_blob_id(ptr), "size": len(data), "path": path,
                            "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                    "pointerSize": len(ptr)}})
            else:
                out.append({"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path})
        return out


_REPO = r"(?P<repo>[^/]+/[^/]+)"


def _make_handler(hub: HubStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        _lose_answer = False

        def _send(self, status: int, obj: Any = None, headers: Optional[dict[str, str]] = None,
                  raw: Optional[bytes] = None) -> None:
            if self._lose_answer:
                self._lose_answer = False
                self.close_connection = True
                return
            data = raw if raw is not None else json.dumps(obj if obj is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization")
            if auth:
                with hub.lock:
                    hub.authorizations.append(auth)
            if not auth or not auth.startswith("Bearer "):
                return False
            return hub.token is None or auth == f"Bearer {hub.token}"

        def _faulted(self, endpoint: str) -> bool:
            mode = hub._fault(endpoint)
            if mode is None:
                return False
            if mode == "lost":
                self._lose_answer = True
                return False
            if mode == "drop":
                self.close_connection = True  # no answer at all: the client sees a dropped connection
                return True
            self._send(int(mode), {"error": f"stand-in: injected HTTP {mode} on {endpoint}"})
            return True

        def _repo(self, repo_id: str) -> Optional[Repo]:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            elif repo.private and not self._authorized():
                self._send(401, {"error": "Invalid credentials"}, {"X-Error-Code": "RepoNotFound"})
                return None
            return repo

        def do_GET(self) -> None:
            u = urlparse(self.path)
            path, query = unquote(u.path), parse_qs(u.query)
            with hub.lock:
                hub.requests.append(("GET", path))
            if path == "/api/whoami-v2":
                if not self._authorized():
                    return self._send(401, {"error": "Invalid credentials"})
                return self._send(200, {"type": "user", "name": "standin-user", "orgs": []})
            m = re.fullmatch(rf"/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", path)
            if m:
                if self._faulted("tree"):
                    return None
                repo = self._repo(m["repo"])
                if repo is not None:
                    recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
                    self._send(200, hub.tree(repo, m["sub"] or "", recursive))
                return None
            m = re.fullmatch(rf"/api/datasets/{_REPO}(?:/revision/(?P<rev>[^/]+))?", path)
            if m:
                repo = self._repo(m["repo"])
                if repo is not None:
                    self._send(200, {"id": repo.repo_id, "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                                     "sha": repo.head, "private": repo.private, "author": repo.repo_id.split("/")[0],
                                     "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
                return None
            m = re.fullmatch(rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
            if m:
                repo = self._repo(m["repo"])
                if repo is not None:
                    if m["file"] not in repo.files:
                        return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    self._send(200, raw=repo.files[m["file"]],
                               headers={"X-Repo-Commit": repo.head, "ETag": f'"{git_blob_id(repo.files[m["file"]])}"'})
                return None
            self._send(404, {"error": f"stand-in: no GET {path}"})

        def do_POST(self) -> None:
            path = unquote(urlparse(self.path).path)
            body = self._body()
            with hub.lock:
                hub.requests.append(("POST", path))
            if path == "/api/validate-yaml":
                content = json.loads(body)["content"]
                m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
                try:
                    yaml.safe_load(m[1] if m else "")
                except yaml.YAMLError as exc:
                    return self._send(400, {"errors": [{"message": str(exc)}]})
                return self._send(200, {"errors": [], "warnings": []})
            if not self._authorized():
                return self._send(401, {"error": "Invalid username or password."})
            if path == "/api/repos/create":
                if self._faulted("create"):
                    return None
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                url = f"{hub.url}/datasets/{repo_id}"
                with hub.lock:
                    if repo_id in hub.repos:
                        return self._send(409, {"error": "You already created this dataset repo", "url": url})
                    repo = Repo(repo_id, req.get("visibility") == "private" or bool(req.get("private")))
                    repo.files[".gitattributes"] = GITATTRIBUTES
                    hub.repos[repo_id] = repo
                    hub._store(repo)
                return self._send(200, {"url": url, "name": repo_id})
            m = re.fullmatch(rf"/api/datasets/{_REPO}/preupload/(?P<rev>[^/]+)", path)
            if m:
                if self._faulted("preupload"):
                    return None
                repo = self._repo(m["repo"])
                if repo is not None:
                    files = json.loads(body)["files"]
                    self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                "oid": None} for f in files], "commitOid": repo.head})
                return None
            m = re.fullmatch(rf"/api/datasets/{_REPO}/commit/(?P<rev>[^/]+)", path)
            if m:
                if self._faulted("commit"):
                    return None
                repo = self._repo(m["repo"])
                if repo is not None:
                    self._commit(repo, body)
                return None
            self._send(404, {"error": f"stand-in: no POST {path}"})

        def _commit(self, repo: Repo, body: bytes) -> None:
            lines = [json.loads(x) for x in body.splitlines() if x.strip()]
            header = next((x["value"] for x in lines if x["key"] == "header"), {})
            added, deleted = [], []
            with hub.lock:
                files = dict(repo.files)
                for x in lines:
                    v = x["value"]
                    if x["key"] == "file":
                        files[v["path"]] = base64.b64decode(v["content"])
                        added.append(v["path"])
                    elif x["key"] == "deletedFile":
                        if v["path"] not in files:
                            return self._send(404, {"error": "A file with this name doesn't exist"},
                                              {"X-Error-Code": "EntryNotFound"})
                        del files[v["path"]]
                        deleted.append(v["path"])
                    elif x["key"] == "deletedFolder":
                        gone = [p for p in files if p.startswith(v["path"].rstrip("/") + "/")]
                        for p in gone:
                            del files[p]
                        deleted += gone
                    elif x["key"] != "header":
                        return self._send(400, {"error": f"stand-in: unsupported commit line {x['key']}"})
                oid = hashlib.sha1((repo.head + json.dumps(lines, sort_keys=True)).encode()).hexdigest()
                repo.files, repo.head = files, oid
                hub.commits.append({"repo": repo.repo_id, "oid": oid, "summary": header.get("summary"),
                                    "added": added, "deleted": deleted})
                hub._store(repo)
            self._send(200, {"success": True, "commitOid": oid, "pullRequestUrl": None,
                             "commitUrl": f"{hub.url}/datasets/{repo.repo_id}/commit/{oid}"})

    return Handler
