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

import contextlib
import hashlib
import itertools
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path

from .hub_repos import _GITATTRIBUTES, Commit, HubError, Repo, git_blob_sha, validate_card_metadata
from .hub_routes import _Handler


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
