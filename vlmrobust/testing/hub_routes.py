"""The local Hub server's HTTP layer: the request handler and the endpoints `huggingface_hub` calls."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .hub_repos import (
    _PREFIX,
    _TYPES,
    Commit,
    HubError,
    Repo,
    _card_metadata,
    git_blob_sha,
    validate_card_metadata,
)


class _Handler(BaseHTTPRequestHandler):
    hub: Any  # the HubServer (set by HubServer.start)
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


def _repo_info(hub: Any, repo: Repo, commit: Commit) -> dict:
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
