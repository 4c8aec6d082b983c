"""Where a publish goes: a Hugging Face Hub dataset repo (`huggingface_hub`), a ModelScope dataset
repo (its client, an optional extra), or a folder / fsspec URL. Each target lists what it holds
with content hashes, so a publish uploads only files that are missing or changed, and commits
a bounded batch of files at a time.

A target never logs or returns its token; errors pass through `redact` before anyone sees them."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

log = logging.getLogger(__name__)

TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
TMP_SUFFIX = ".nexus-tmp"  # a dir target's file being written
MODELSCOPE_EXTRA = "pip install 'nexus-gen[modelscope]'"


class PublishError(RuntimeError):
    """A publish cannot start or did not finish; the message says why and what to do."""


@dataclass(frozen=True)
class LocalFile:
    path: str  # path in the repo (posix)
    local: Path
    size: int
    sha256: str
    git_sha1: str  # git blob id, what the Hub lists for a regular (non-LFS) file


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: Optional[str] = None  # content sha256 (an LFS file on the Hub; every file of a dir target)
    git_sha1: Optional[str] = None  # git blob id (a regular file on the Hub)

    def same_as(self, f: LocalFile) -> bool:
        """True when the remote file has the local file's content."""
        if self.sha256 is not None:
            return self.sha256 == f.sha256
        if self.git_sha1 is not None:
            return self.git_sha1 == f.git_sha1
        return False


def local_file(root: Path, path: Path) -> LocalFile:
    """A staged file with its size, sha256 and git blob id (one read)."""
    size = path.stat().st_size
    sha, blob = hashlib.sha256(), hashlib.sha1()
    blob.update(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            sha.update(chunk)
            blob.update(chunk)
    return LocalFile(path.relative_to(root).as_posix(), path, size, sha.hexdigest(), blob.hexdigest())


def redact(text: object, secret: Optional[str]) -> str:
    """`text` as a string with every occurrence of `secret` replaced by `***`."""
    s = str(text)
    return s.replace(secret, "***") if secret else s


def _status(exc: BaseException) -> Optional[int]:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None) if resp is not None else None


def is_transient(exc: BaseException) -> bool:
    """A connection fault, a timeout, HTTP 408/429/5xx, or an error caused by one; never a 4xx
    (bad request, auth, not found, conflict): those fail the same way again."""
    seen = 0
    while exc is not None and seen < 8:
        status = _status(exc)
        if status is not None:
            return status in TRANSIENT_STATUS
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3") and any(
                c.__name__ in ("TransportError", "ConnectionError", "Timeout", "ProtocolError")
                for c in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class Target(Protocol):
    kind: str
    label: str  # what the user named: `hf:org/name`, `dir:/path (org/name)` (never a token)
    location: str  # where it lands: a URL or a path

    def check_access(self) -> None:
        """Fail early (before any staging) when the credentials are refused."""

    def ensure_repo(self) -> None:
        """Create the repository if it does not exist."""

    def list_files(self) -> dict[str, RemoteFile]:
        """Every file of the repository with its hashes (empty if there is no repository yet)."""

    def commit(self, adds: list[LocalFile], deletes: list[str], message: str) -> str:
        """Upload `adds` and remove `deletes` as one commit; returns the commit id."""


class DirTarget:
    """A local folder or an fsspec URL (`s3://bucket/prefix`, `memory://x`): the repository is
    `<location>/<org>/<name>`. Each file is written to a temporary name and renamed; the commit
    id is the sha1 of what it changed."""

    kind = "dir"

    def __init__(self, location: str, repo_id: str):
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(location)
        self.root = posixpath.join(root.rstrip("/") or "/", repo_id)
        self.label = f"dir:{location} ({repo_id})"
        from fsspec.implementations.local import LocalFileSystem

        self.location = self.root if isinstance(self.fs, LocalFileSystem) else f"{location.rstrip('/')}/{repo_id}"

    def check_access(self) -> None:
        pass  # a folder has no credentials; a write problem shows at the first commit

    def ensure_repo(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def list_files(self) -> dict[str, RemoteFile]:
        if not self.fs.exists(self.root):
            return {}
        out = {}
        for p, info in sorted(self.fs.find(self.root, detail=True).items()):
            rel = posixpath.relpath(p, self.root)
            sha = hashlib.sha256()
            with self.fs.open(p, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    sha.update(chunk)
            out[rel] = RemoteFile(rel, int(info.get("size") or 0), sha256=sha.hexdigest())
        return out

    def commit(self, adds: list[LocalFile], deletes: list[str], message: str) -> str:
        for f in adds:
            final = posixpath.join(self.root, f.path)
            tmp = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}{TMP_SUFFIX}")
            self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
            self.fs.put_file(str(f.local), tmp)
            self.fs.mv(tmp, final)
        for d in deletes:
            self.fs.rm(posixpath.join(self.root, d))
        change = json.dumps({"message": message, "adds": [[f.path, f.sha256] for f in adds],
                             "deletes": sorted(deletes)}, sort_keys=True)
        return hashlib.sha1(change.encode()).hexdigest()


class HfTarget:
    """A dataset repository on a Hugging Face Hub (`endpoint`, default the public Hub or
    `HF_ENDPOINT`), through `huggingface_hub.HfApi`."""

    kind = "hf"

    def __init__(self, repo_id: str, token: str, endpoint: Optional[str] = None, private: bool = False):
        from huggingface_hub import HfApi, constants

        if constants.is_offline_mode():
            raise PublishError("the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE "
                               "is set): unset it to publish, or publish to --hub dir:PATH")
        self.repo_id, self.private = repo_id, private
        self.api = HfApi(endpoint=endpoint, token=token)
        self.label = f"hf:{repo_id}"
        self.location = f"{self.api.endpoint}/datasets/{repo_id}"

    def check_access(self) -> None:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self.api.whoami()
        except HfHubHTTPError as exc:
            if _status(exc) in (401, 403):
                raise PublishError(f"{self.api.endpoint} refused the Hugging Face token (HTTP {_status(exc)}): "
                                   "set HF_TOKEN to a valid token with write access, or `huggingface-cli login`") from None
            raise

    def ensure_repo(self) -> None:
        self.api.create_repo(self.repo_id, repo_type="dataset", private=self.private, exist_ok=True)

    def list_files(self) -> dict[str, RemoteFile]:
        from huggingface_hub import RepoFile
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            entries = list(self.api.list_repo_tree(self.repo_id, repo_type="dataset", recursive=True))
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return {}
        return {e.path: RemoteFile(e.path, e.size, sha256=e.lfs.sha256 if e.lfs else None, git_sha1=e.blob_id)
                for e in entries if isinstance(e, RepoFile)}

    def commit(self, adds: list[LocalFile], deletes: list[str], message: str) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.local)) for f in adds]
        ops += [CommitOperationDelete(path_in_repo=d) for d in deletes]
        info = self.api.create_commit(self.repo_id, operations=ops, commit_message=message, repo_type="dataset")
        return info.oid


class ModelScopeTarget:
    """A dataset repository on ModelScope through its client (`modelscope`, the optional extra
    `nexus-gen[modelscope]`). Its client offers no listing with hashes here, so every publish
    hands it the batch and it skips blobs it already holds."""

    kind = "modelscope"

    def __init__(self, repo_id: str, token: Optional[str], private: bool = False):
        try:
            from modelscope.hub.api import HubApi
        except ImportError:
            raise PublishError(f"--hub modelscope needs the ModelScope client, which is not installed: "
                               f"{MODELSCOPE_EXTRA}") from None
        self.repo_id, self.private = repo_id, private
        self.api = HubApi()
        if token:
            self.api.login(token)
        self.label = f"modelscope:{repo_id}"
        self.location = f"https://modelscope.cn/datasets/{repo_id}"

    def check_access(self) -> None:
        pass  # the client checks its login at the first call

    def ensure_repo(self) -> None:
        self.api.create_repo(self.repo_id, repo_type="dataset", visibility="private" if self.private else "public",
                             exist_ok=True)

    def list_files(self) -> dict[str, RemoteFile]:
        return {}

    def commit(self, adds: list[LocalFile], deletes: list[str], message: str) -> str:
        if deletes:
            log.warning("ModelScope: %d stale file(s) are left in %s (the client deletes no files): %s",
                        len(deletes), self.repo_id, ", ".join(deletes))
        with tempfile.TemporaryDirectory(prefix="nexus-gen-ms-") as tmp:
            for f in adds:  # the batch as a folder of links, the unit its client uploads
                dst = Path(tmp) / f.path
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(f.local, dst)
                except OSError:
                    import shutil

                    shutil.copyfile(f.local, dst)
            self.api.upload_folder(repo_id=self.repo_id, folder_path=tmp, commit_message=message,
                                   repo_type="dataset")
        return hashlib.sha1(json.dumps([[f.path, f.sha256] for f in adds]).encode()).hexdigest()
