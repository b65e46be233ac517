"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests that run the *real* `huggingface_hub` client.

It implements the endpoints that `HfApi.create_repo` / `delete_repo` / `whoami`, `create_commit` / `upload_file` /
`upload_folder` (preupload + NDJSON commit; every file is answered with the "regular" upload mode, so no LFS / Xet
transfer is needed), `repo_info` / `model_info`, `list_repo_files` / `list_repo_tree` / `get_paths_info`,
`list_repo_refs` / `list_repo_commits`, `create_branch` / `delete_branch`, `hf_hub_download` / `snapshot_download`
(`resolve` with the `X-Repo-Commit` and `ETag` headers, ranges) and `ModelCard.validate` (`/api/validate-yaml`) call,
with private repos, organisations and tokens. State lives in memory; every commit is atomic (all operations apply,
or none).

    from vlmrobust.testing.hub_server import local_hub

    with local_hub(tokens={"hf_test_alice": "alice"}) as hub:   # huggingface_hub now talks to hub.url
        HfApi(token="hf_test_alice").create_repo("alice/x")

`local_hub` points an already imported `huggingface_hub` at the server (it reads `constants.ENDPOINT` at call time,
except in `HfApi` objects built earlier: the module-level shortcuts' shared one is re-pointed, transformers' shared
one rebuilt) and exports `HF_ENDPOINT` & co. for subprocesses; it isolates the cache (`HF_HUB_CACHE`) and the token file
(`HF_HOME`) in a temporary folder and turns `HF_HUB_OFFLINE` off for its duration. It also sets `HF_HUB_DISABLE_XET`:
the server has no Xet / LFS storage, and without Xet `upload_folder` takes its single-commit path.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob (what the Hub returns as a regular file's `oid` / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    files: dict[str, bytes]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or (revision if revision in self.commits else None)
        return self.commits.get(oid) if oid else None


class HubError(Exception):
    """An HTTP error answered the way the Hub does (status, `X-Error-Code`, JSON `error`)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None,
                 body: Mapping | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})
        self.body = dict(body or {})


class HubServer:
    """In-memory Hub served on `127.0.0.1:<free port>` from a background thread.

    Args:
        tokens (`Mapping[str, str]`, *optional*): access token -> user name; every token may write to its user's
            namespace and to the organisations in `orgs` the user belongs to. Defaults to `{"hf_test_token": "tester"}`.
        orgs (`Mapping[str, list[str]]`, *optional*): organisation -> member user names.
        read_only_tokens (`Mapping[str, str]`, *optional*): tokens that may read (private repos of their user) but not
            write.

    Attributes:
        url (`str`): the endpoint, e.g. `http://127.0.0.1:43121`.
        requests (`list[tuple[str, str, int]]`): `(method, path, status)` of every request served, for assertions.
        unhandled (`list[tuple[str, str]]`): requests no route matched (a client call the server does not implement).
    """

    def __init__(self, tokens: Mapping[str, str] | None = None, orgs: Mapping[str, list[str]] | None = None,
                 read_only_tokens: Mapping[str, str] | None = None):
        self.tokens = dict(tokens if tokens is not None else {"hf_test_token": "tester"})
        self.read_only_tokens = dict(read_only_tokens or {})
        self.orgs = {k: list(v) for k, v in (orgs or {}).items()}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._failures: list[list] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running: call start() first.")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- test helpers ---------------------------------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, status: int = 500, message: str = "injected failure",
             times: int = 1) -> None:
        """Answer the next `times` requests matching `method` and `path_regex` with an error (network / Hub fault)."""
        with self._lock:
            self._failures.append([method.upper(), re.compile(path_regex), status, message, times])

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repo at a revision (path -> content)."""
        commit = self.repos[(repo_type, repo_id)].resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return dict(commit.files)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """The commits of a branch, newest first (the last one is the repo's initial commit)."""
        repo = self.repos[(repo_type, repo_id)]
        out, commit = [], repo.resolve(revision)
        while commit is not None:
            out.append(commit)
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return out

    # -- state changes --------------------------------------------------------------------------------------------
    def _new_oid(self, *parts: str) -> str:
        return hashlib.sha1("\0".join((*parts, str(next(self._counter)), str(time.time()))).encode()).hexdigest()

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], title: str, message: str, author: str,
                parent: str | None) -> Commit:
        oid = self._new_oid(repo.repo_id, branch, title)
        commit = Commit(oid, parent, title, message, author, files)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repo directly (e.g. one owned by somebody else, for name-taken tests)."""
        with self._lock:
            repo = Repo(repo_id, repo_type, private)
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", {".gitattributes": _GITATTRIBUTES}, "initial commit", "", "system", None)
            return repo


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's signature)
        pass  # quiet: tests read `hub.requests`

    # every verb goes through one dispatcher
    def do_GET(self):  # noqa: N802
        self._dispatch()

    def do_HEAD(self):  # noqa: N802
        self._dispatch()

    def do_POST(self):  # noqa: N802
        self._dispatch()

    def do_PUT(self):  # noqa: N802
        self._dispatch()

    def do_DELETE(self):  # noqa: N802
        self._dispatch()

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        path = urlsplit(self.path).path
        with self.hub._lock:
            self.hub.requests.append((self.command, path, status))

    def _json(self, status: int, obj, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        raw_parts = [p for p in url.path.split("/") if p != ""]
        body = self._body()
        try:
            with self.hub._lock:
                for rule in self.hub._failures:
                    if rule[0] == self.command and rule[1].search(url.path) and rule[4] > 0:
                        rule[4] -= 1
                        raise HubError(rule[2], rule[3])
            handled = _route(self, raw_parts, query, body)
            if not handled:
                with self.hub._lock:
                    self.hub.unhandled.append((self.command, url.path))
                raise HubError(404, f"Sorry, the local test Hub has no route for {self.command} {url.path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json(err.status, {"error": err.message, **err.body}, headers)

    # -- auth -----------------------------------------------------------------------------------------------------
    def user(self, required: bool = False, write: bool = False) -> str | None:
        auth = self.headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token is None:
            if required:
                raise HubError(401, "You must be authenticated to do this: pass a token.")
            return None
        if token in self.hub.tokens:
            return self.hub.tokens[token]
        if token in self.hub.read_only_tokens:
            if write:
                raise HubError(403, "You have read access but not the required permissions for this operation.")
            return self.hub.read_only_tokens[token]
        raise HubError(401, "Invalid credentials in Authorization header")

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.hub.orgs.get(namespace, []))

    def repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        user = self.user(required=write, write=write)
        repo = self.hub.repos.get((repo_type, repo_id))
        namespace = repo_id.split("/")[0]
        if repo is None or (repo.private and not self.can_write(user, namespace)):
            # the Hub answers a private repo without access exactly like a missing one
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write and not self.can_write(user, namespace):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit


def _route(h: _Handler, parts: list[str], query: dict, body: bytes) -> bool:
    """Dispatch on the raw (still quoted) path segments; return False when no route matches."""
    hub, method = h.hub, h.command
    p = [unquote(x) for x in parts]
    if p[:1] == ["api"]:
        if p[1:] == ["whoami-v2"] and method in ("GET", "HEAD"):
            user = h.user(required=True)
            orgs = [{"name": o, "type": "org", "roleInOrg": "write"} for o, members in hub.orgs.items()
                    if user in members]
            role = "read" if user in hub.read_only_tokens.values() and user not in hub.tokens.values() else "write"
            h._json(200, {"type": "user", "id": user, "name": user, "fullname": user, "orgs": orgs,
                          "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}}})
            return True
        if p[1:] == ["repos", "create"] and method == "POST":
            _create_repo(h, json.loads(body or b"{}"))
            return True
        if p[1:] == ["repos", "delete"] and method == "DELETE":
            data = json.loads(body or b"{}")
            repo_id = f"{data.get('organization') or h.user(required=True)}/{data['name']}"
            h.repo(data.get("type") or "model", repo_id, write=True)
            with hub._lock:
                del hub.repos[(data.get("type") or "model", repo_id)]
            h._json(200, {})
            return True
        if p[1:] == ["validate-yaml"] and method == "POST":
            errors = validate_card_metadata(json.loads(body or b"{}").get("content", ""))
            if errors:
                h._json(400, {"errors": [{"message": e} for e in errors]})
            else:
                h._json(200, {"warnings": []})
            return True
        if len(p) >= 4 and p[1] in _TYPES:
            return _repo_api(h, _TYPES[p[1]], f"{p[2]}/{p[3]}", parts[4:], query, body)
        return False
    # file downloads: /<ns>/<name>/resolve/<rev>/<path>, /datasets/<ns>/<name>/resolve/...
    repo_type = "model"
    if p[:1] and p[0] in ("datasets", "spaces"):
        repo_type, parts, p = _TYPES[p[0]], parts[1:], p[1:]
    if len(p) >= 5 and p[2] == "resolve" and method in ("GET", "HEAD"):
        _resolve(h, repo_type, f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]))
        return True
    return False


def _create_repo(h: _Handler, data: dict) -> None:
    hub = h.hub
    user = h.user(required=True, write=True)
    namespace = data.get("organization") or user
    repo_type = data.get("type") or "model"
    repo_id = f"{namespace}/{data['name']}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", data["name"]) or "--" in data["name"]:
        raise HubError(400, f"Invalid repo name {data['name']!r}")
    if not h.can_write(user, namespace):
        raise HubError(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')
    url = f"{hub.url}/{_PREFIX[repo_type]}{repo_id}"
    with hub._lock:
        if (repo_type, repo_id) in hub.repos:
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        private = data.get("visibility") == "private" or bool(data.get("private"))
        hub.create_repo(repo_id, repo_type, private)
    h._json(200, {"url": url, "name": repo_id, "id": repo_id})


def _repo_api(h: _Handler, repo_type: str, repo_id: str, raw_rest: list[str], query: dict, body: bytes) -> bool:
    hub, method = h.hub, h.command
    rest = [unquote(x) for x in raw_rest]
    if not rest or rest[0] == "revision":
        if method != "GET":
            return False
        repo = h.repo(repo_type, repo_id)
        commit = h.commit_at(repo, rest[1] if rest else "main")
        h._json(200, _repo_info(hub, repo, commit))
        return True
    action = rest[0]
    if action == "tree" and method == "GET" and len(rest) >= 2:
        repo = h.repo(repo_type, repo_id)
        commit = h.commit_at(repo, rest[1])
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        entries = _tree(commit, "/".join(rest[2:]), recursive)
        if entries is None:
            raise HubError(404, f"{'/'.join(rest[2:])} does not exist on {rest[1]}", "EntryNotFound")
        h._json(200, entries)
        return True
    if action == "paths-info" and method == "POST" and len(rest) == 2:
        repo = h.repo(repo_type, repo_id)
        commit = h.commit_at(repo, rest[1])
        form = parse_qs(body.decode())
        wanted = form.get("paths", [])
        out = []
        for path in wanted:
            if path in commit.files:
                out.append(_file_entry(path, commit.files[path]))
            elif any(f.startswith(path.rstrip("/") + "/") for f in commit.files):
                out.append({"type": "directory", "oid": git_blob_sha(path.encode()), "path": path})
        h._json(200, out)
        return True
    if action == "refs" and method == "GET":
        repo = h.repo(repo_type, repo_id)
        h._json(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                                   for b, oid in repo.branches.items()],
                      "converts": [], "tags": [], "pullRequests": []})
        return True
    if action == "commits" and method == "GET" and len(rest) == 2:
        repo = h.repo(repo_type, repo_id)
        h.commit_at(repo, rest[1])
        h._json(200, [{"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                       "authors": [{"user": c.author}]} for c in hub.commits(repo_id, rest[1], repo_type)])
        return True
    if action == "preupload" and method == "POST" and len(rest) == 2:
        repo = h.repo(repo_type, repo_id, write=True)
        commit = h.commit_at(repo, rest[1])
        files = json.loads(body or b"{}").get("files", [])
        h._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                 "oid": git_blob_sha(commit.files[f["path"]]) if f["path"] in commit.files else None}
                                for f in files], "commitOid": commit.oid})
        return True
    if action == "commit" and method == "POST" and len(rest) == 2:
        if query.get("create_pr"):
            raise HubError(400, "the local test Hub does not implement pull requests")
        repo = h.repo(repo_type, repo_id, write=True)
        user = h.user(required=True)
        _apply_commit(h, repo, rest[1], body, user)
        return True
    if action == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
        repo = h.repo(repo_type, repo_id, write=True)
        branch = rest[1]
        with hub._lock:
            if method == "DELETE":
                if branch not in repo.branches or branch == "main":
                    raise HubError(404 if branch not in repo.branches else 403, f"cannot delete branch {branch}")
                del repo.branches[branch]
            else:
                if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
                    raise HubError(400, f"Invalid reference for a branch: {branch}")
                if branch in repo.branches:
                    raise HubError(409, f"Reference {branch} already exists")
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.branches[branch] = h.commit_at(repo, start).oid
        h._json(200, {})
        return True
    return False


def _apply_commit(h: _Handler, repo: Repo, revision: str, body: bytes, user: str) -> None:
    """Apply an NDJSON commit atomically: validate every line first, then write one new commit."""
    hub = h.hub
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "commit payload must start with a header line")
    header = lines[0]["value"]
    with hub._lock:
        if revision not in repo.branches:
            if revision in repo.commits:
                raise HubError(400, "can only commit to a branch, not to a commit id")
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        if header.get("parentCommit") and header["parentCommit"] != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value") or {}
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[path] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                gone = [f for f in files if f.startswith(prefix)]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for f in gone:
                    del files[f]
            elif key == "lfsFile":
                raise HubError(400, "the local test Hub only takes regular uploads (preupload answered 'regular')")
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        commit = hub._commit(repo, revision, files, header.get("summary", ""), header.get("description", ""), user,
                             head.oid)
    prefix = _PREFIX[repo.repo_type]
    h._json(200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                  "commitUrl": f"{hub.url}/{prefix}{repo.repo_id}/commit/{commit.oid}"})


def _resolve(h: _Handler, repo_type: str, repo_id: str, revision: str, path: str) -> None:
    repo = h.repo(repo_type, repo_id)
    commit = h.commit_at(repo, revision)
    if path not in commit.files:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
    data = commit.files[path]
    headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha(data)}"', "Accept-Ranges": "bytes"}
    status = 200
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range") or "")
    if m and h.command == "GET":
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else len(data) - 1
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        data, status = data[start:end + 1], 206
    h._send(status, data, headers, content_type="application/octet-stream")


def _file_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}


def _tree(commit: Commit, path: str, recursive: bool) -> list[dict] | None:
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    if prefix and not any(f.startswith(prefix) for f in commit.files):
        return None
    out, dirs = [], set()
    for f in sorted(commit.files):
        if not f.startswith(prefix):
            continue
        rel = f[len(prefix):]
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = prefix + "/".join(parts[:i])
            if (recursive or i == 1) and d not in dirs:
                dirs.add(d)
                out.append({"type": "directory", "oid": git_blob_sha(d.encode()), "path": d, "size": 0})
        if recursive or len(parts) == 1:
            out.append(_file_entry(f, commit.files[f]))
    return out


def _repo_info(hub: HubServer, repo: Repo, commit: Commit) -> dict:
    card = _card_metadata(commit.files.get("README.md", b"").decode("utf-8", "replace"))
    first = hub.commits(repo.repo_id, next(iter(repo.branches)), repo.repo_type)[-1]
    info = {"_id": repo.repo_id, "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid,
            "lastModified": commit.date, "createdAt": first.date, "private": repo.private, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": list(card.get("tags") or []),
            "siblings": [{"rfilename": f, "size": len(d), "blobId": git_blob_sha(d)}
                         for f, d in sorted(commit.files.items())],
            "cardData": card or None, "usedStorage": sum(len(d) for d in commit.files.values())}
    if repo.repo_type == "model":
        info.update(modelId=repo.repo_id, library_name=card.get("library_name"),
                    pipeline_tag=card.get("pipeline_tag"))
        if "model-index" in card:
            info["model-index"] = card["model-index"]
    return info


def _card_metadata(text: str) -> dict:
    import yaml

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def validate_card_metadata(text: str) -> list[str]:
    """Errors the Hub's card validation would report for a README's YAML block ([] when it is valid).

    Checks what `/api/validate-yaml` enforces for the fields vlmrobust writes: the block parses to a mapping, `tags` /
    `datasets` / `base_model` have the right types, and `model-index` follows the Hub's schema (name; results with
    `task.type`, `dataset.type` + `dataset.name`, metrics with `type` + numeric `value`; a `source` with `url`),
    the latter parsed back with `huggingface_hub`'s own `model_index_to_eval_results`.
    """
    import yaml
    from huggingface_hub.repocard_data import model_index_to_eval_results

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return []
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as err:
        return [f"Invalid YAML: {err}"]
    if data is None:
        return []
    if not isinstance(data, dict):
        return ["metadata must be a YAML mapping"]
    errors = []
    for key in ("tags", "datasets"):
        v = data.get(key)
        if v is not None and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            errors.append(f'"{key}" must be a string or an array of strings')
    base = data.get("base_model")
    if base is not None:
        ids = base if isinstance(base, list) else [base]
        if not all(isinstance(b, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", b) for b in ids):
            errors.append(f'"base_model" must be model ids on the Hub (namespace/name), got {base!r}')
    index = data.get("model-index")
    if index is None:
        return errors
    if not isinstance(index, list) or not index:
        return errors + ['"model-index" must be a non-empty array']
    for i, entry in enumerate(index):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            errors.append(f'"model-index[{i}].name" is required')
            continue
        for j, res in enumerate(entry.get("results") or []):
            where = f"model-index[{i}].results[{j}]"
            if not isinstance((res.get("task") or {}).get("type"), str):
                errors.append(f'"{where}.task.type" is required')
            ds = res.get("dataset") or {}
            if not isinstance(ds.get("type"), str) or not isinstance(ds.get("name"), str):
                errors.append(f'"{where}.dataset" needs "type" and "name"')
            src = res.get("source")
            if src is not None and not (isinstance(src, dict) and isinstance(src.get("url"), str)):
                errors.append(f'"{where}.source.url" is required when a source is given')
            metrics = res.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f'"{where}.metrics" must be a non-empty array')
                continue
            for k, met in enumerate(metrics):
                if not isinstance(met, dict) or not isinstance(met.get("type"), str):
                    errors.append(f'"{where}.metrics[{k}].type" is required')
                elif isinstance(met.get("value"), bool) or not isinstance(met.get("value"), (int, float, str)):
                    errors.append(f'"{where}.metrics[{k}].value" must be a number or a string')
    if not errors:
        try:
            model_index_to_eval_results(index)
        except (KeyError, TypeError, ValueError) as err:
            errors.append(f"model-index cannot be parsed: {type(err).__name__}: {err}")
    return errors


@contextlib.contextmanager
def local_hub(tokens: Mapping[str, str] | None = None, orgs: Mapping[str, list[str]] | None = None,
              read_only_tokens: Mapping[str, str] | None = None,
              cache_dir: str | os.PathLike | None = None) -> Iterator[HubServer]:
    """Start a :class:`HubServer` and point `huggingface_hub` (this process and subprocesses) at it.

    Args:
        tokens, orgs, read_only_tokens: see :class:`HubServer`.
        cache_dir (`str`, *optional*): `HF_HOME` to use (the Hub cache is `<cache_dir>/hub`); a temporary folder
            by default, so nothing from the user's cache (or token) leaks into a test.
    """
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import hf_api
    from huggingface_hub.utils import _http as hf_http

    tmp = tempfile.TemporaryDirectory(prefix="local-hub-") if cache_dir is None else None
    home = Path(cache_dir if cache_dir is not None else tmp.name)
    server = HubServer(tokens, orgs, read_only_tokens).start()
    env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(home),
           "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    consts = {"ENDPOINT": server.url, "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
              "HF_HUB_OFFLINE": False, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
              "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
              "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_XET": True}
    # the module-level shortcuts (`huggingface_hub.file_exists`, `model_info`, ... used by peft) are methods of one
    # `HfApi()` built at import time, whose endpoint was read then; transformers keeps its own shared `HfApi`, built
    # on first use (possibly before this context): it is dropped for the duration, and restored after
    default_api = hf_api.api
    tf_hub = sys.modules.get("transformers.utils.hub")
    saved_env = {k: os.environ.get(k) for k in (*env, "HF_TOKEN")}
    saved_consts = {k: getattr(hf_constants, k) for k in consts}
    saved_endpoint = default_api.endpoint
    saved_tf_api = getattr(tf_hub, "_hf_api", None)
    os.environ.update(env)
    os.environ.pop("HF_TOKEN", None)
    for k, v in consts.items():
        setattr(hf_constants, k, v)
    default_api.endpoint = server.url
    if tf_hub is not None and hasattr(tf_hub, "_hf_api"):
        tf_hub._hf_api = None
    saved_factory = hf_http._GLOBAL_CLIENT_FACTORY
    hf_http.set_client_factory(_local_only(saved_factory, server.url))
    _datasets_offline(False)
    try:
        yield server
    finally:
        hf_http.set_client_factory(saved_factory)
        server.stop()
        default_api.endpoint = saved_endpoint
        tf_hub = sys.modules.get("transformers.utils.hub")  # imported inside the context, perhaps
        if tf_hub is not None and hasattr(tf_hub, "_hf_api"):
            tf_hub._hf_api = saved_tf_api
        for k, v in saved_consts.items():
            setattr(hf_constants, k, v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _datasets_offline(bool(saved_consts["HF_HUB_OFFLINE"]))
        if tmp is not None:
            tmp.cleanup()


class LeftTheLocalHub(RuntimeError):
    """A request inside `local_hub` went somewhere else than the local server (a client not re-pointed)."""


def _local_only(factory, url: str):
    """Wrap `huggingface_hub`'s client factory: a request to any other host fails at once, loudly (instead of
    retrying the real Hub for minutes), so a test can never reach the network through the client."""

    def guard(request) -> None:
        if not str(request.url).startswith(url):
            raise LeftTheLocalHub(f"request to {request.url} inside local_hub (server at {url}): some HfApi / "
                                  "endpoint was not pointed at the local Hub.")

    def make():
        client = factory()
        client.event_hooks["request"].insert(0, guard)
        return client

    return make


def _datasets_offline(value: bool) -> None:
    cfg = sys.modules.get("datasets.config")
    if cfg is not None and hasattr(cfg, "HF_HUB_OFFLINE"):
        cfg.HF_HUB_OFFLINE = value


__all__ = ["Commit", "HubError", "HubServer", "LeftTheLocalHub", "Repo", "git_blob_sha", "local_hub",
           "validate_card_metadata"]
