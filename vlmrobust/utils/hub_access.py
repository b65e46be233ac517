"""Reaching the Hugging Face Hub: a short reachability probe, the cache-only fallback, and one-line errors.

`huggingface_hub` retries a failed request with back-off (and waits up to its timeouts on every try), so without
network and without `HF_HUB_OFFLINE=1` a command that loads a Hub model used to spend minutes before failing with
a page of tracebacks. Here:

- :func:`use_cache_if_unreachable` probes the endpoint once per process with a short timeout
  (`VLMROBUST_HUB_PROBE_TIMEOUT`, default 3 s); when the Hub cannot be reached it switches this process to the
  cache only, exactly as `HF_HUB_OFFLINE=1` would, and says so in one line;
- :func:`hub_download` wraps a loader: a file missing from the cache then becomes one :class:`HubAccessError` line
  that names `HF_HUB_OFFLINE=1`, the cache folder and the fix;
- :func:`require_hub` fails at once for commands that cannot work from the cache (push, updating a card);
- :func:`describe_hub_error` turns an HTTP / network error of `huggingface_hub` into one line (authentication,
  permissions, name taken, missing repo or revision), never quoting the token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_ENV = "VLMROBUST_HUB_PROBE_TIMEOUT"
DEFAULT_PROBE_TIMEOUT = 3.0

#: endpoint -> None (reachable) or why not; one probe per endpoint and process
_PROBED: dict[str, str | None] = {}


class HubAccessError(RuntimeError):
    """The Hub cannot be used for what was asked; the message is one line that says why and what to do."""


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def is_offline() -> bool:
    """Whether `huggingface_hub` is in offline (cache-only) mode in this process."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def probe_timeout() -> float:
    try:
        return float(os.environ.get(PROBE_TIMEOUT_ENV, DEFAULT_PROBE_TIMEOUT))
    except ValueError:
        return DEFAULT_PROBE_TIMEOUT


def probe_hub(timeout: float | None = None, *, refresh: bool = False) -> str | None:
    """`None` when the Hub endpoint answers (any HTTP status) within `timeout` seconds, else the reason it does not.

    Goes through `huggingface_hub`'s own HTTP session (proxies and client factory included), without retries.

    Args:
        timeout (`float`, *optional*): seconds to wait; `VLMROBUST_HUB_PROBE_TIMEOUT` or 3 s by default.
        refresh (`bool`, *optional*, defaults to `False`): probe again instead of reusing this process's answer.
    """
    from huggingface_hub.utils import get_session

    endpoint = hub_endpoint()
    if not refresh and endpoint in _PROBED:
        return _PROBED[endpoint]
    timeout = probe_timeout() if timeout is None else timeout
    try:
        get_session().head(f"{endpoint}/api/whoami-v2", timeout=timeout, follow_redirects=False)
        reason = None
    except Exception as err:  # connection refused / DNS / timeout / TLS: all mean "not reachable from here"
        reason = _short_reason(err, timeout)
    _PROBED[endpoint] = reason
    return reason


def reset_probe() -> None:
    """Forget the probe results (tests, or after the network came back)."""
    _PROBED.clear()


def set_offline(value: bool = True) -> None:
    """Put `huggingface_hub` (and `datasets`, `transformers`, subprocesses) in offline mode, as `HF_HUB_OFFLINE=1`."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = value
    os.environ["HF_HUB_OFFLINE"] = "1" if value else "0"
    os.environ["HF_DATASETS_OFFLINE"] = "1" if value else "0"
    cfg = sys.modules.get("datasets.config")
    if cfg is not None and hasattr(cfg, "HF_HUB_OFFLINE"):
        cfg.HF_HUB_OFFLINE = value


def use_cache_if_unreachable() -> str | None:
    """Probe the Hub unless offline already; when it is unreachable, switch to the cache only and say so once.

    Returns the reason the Hub is not used (`"HF_HUB_OFFLINE=1"` or the probe's reason), or `None` when it is.
    """
    if is_offline():
        return "HF_HUB_OFFLINE=1"
    reason = probe_hub()
    if reason is not None:
        set_offline(True)
        logger.warning("vlmrobust: cannot reach the Hub at %s (%s): using the local cache only, as with "
                       "HF_HUB_OFFLINE=1.", hub_endpoint(), reason)
    return reason


def require_hub(action: str) -> None:
    """Raise :class:`HubAccessError` now when `action` (e.g. "push to the Hub") cannot reach the Hub."""
    if is_offline():
        raise HubAccessError(f"Cannot {action}: HF_HUB_OFFLINE=1 is set (cache only); unset it to use the Hub at "
                             f"{hub_endpoint()}.")
    reason = probe_hub()
    if reason is not None:
        raise HubAccessError(f"Cannot {action}: the Hub at {hub_endpoint()} is unreachable ({reason}); check the "
                             "network / proxy, or HF_ENDPOINT if you use a mirror.")


def needs_hub(model_id: str) -> bool:
    """Whether a `create_model` id may have to download from the Hub (a Hub id, not a local folder or fixture)."""
    prefix, _, spec = model_id.partition(":")
    if prefix == "hf-hub":
        return True
    if prefix == "open_clip":
        pretrained = spec.partition("/")[2]
        return bool(pretrained) and not Path(pretrained).expanduser().is_file()
    if prefix in ("hf-clip", "llava", "qwen_vl", "paligemma"):
        return not spec.startswith("tiny") and not Path(spec).expanduser().exists()
    return False


def needs_hub_source(source: str) -> bool:
    """Whether a suite dataset `source:` names a Hub dataset (`org/name` or `webdataset:org/name`)."""
    kind, sep, loc = source.partition(":")
    repo = loc if sep and kind == "webdataset" else (source if not sep else "")
    return "/" in repo and not Path(repo).expanduser().exists()


def is_cache_miss(err: BaseException) -> bool:
    """Whether `err` (or an error it was raised from) says a file was neither in the cache nor downloadable."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        text = str(e).lower()
        if "local cache" in text or "offline mode" in text or "cached files" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def cache_miss_message(what: str, reason: str | None = None, *, reachable: bool = False) -> str:
    """One line: `what` is not in the cache and the Hub cannot be used; names HF_HUB_OFFLINE=1 and the cache.

    Args:
        what (`str`): the thing that was being loaded.
        reason (`str`, *optional*): why the Hub is not used (`None` / `"HF_HUB_OFFLINE=1"`: offline mode).
        reachable (`bool`, *optional*, defaults to `False`): the endpoint answered, but did not deliver the file
            (a proxy, a captive portal, a mirror without it).
    """
    where = f"the local Hub cache ({hub_cache_dir()})"
    if reachable:
        return (f"{what} is not in {where} and could not be downloaded from {hub_endpoint()} ({reason}): check the "
                "network, proxy and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache only, or load a local "
                "copy (e.g. local-dir:<path>).")
    if reason in (None, "HF_HUB_OFFLINE=1"):
        return (f"{what} is not in {where} and HF_HUB_OFFLINE=1 is set: download it once with network access "
                "(unset HF_HUB_OFFLINE), or load a local copy (e.g. local-dir:<path>).")
    return (f"{what} is not in {where} and the Hub at {hub_endpoint()} is unreachable ({reason}): download it once "
            "with network access, or load a local copy (e.g. local-dir:<path>); set HF_HUB_OFFLINE=1 to skip the "
            "network check and use the cache only.")


@contextlib.contextmanager
def hub_download(what: str) -> Iterator[None]:
    """Run a loader that may download `what` from the Hub: probe first, and turn a cache miss into one line.

    Args:
        what (`str`): the thing loaded, as the user named it (e.g. `'open_clip:ViT-B-32/openai'`).
    """
    reason = use_cache_if_unreachable()
    quiet = _DropDownloadErrors()
    root = logging.getLogger()
    root.addFilter(quiet)  # a loader's own "failed to download" log line would repeat the one line raised below
    try:
        yield
    except HubAccessError:
        raise
    except Exception as err:
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        if is_offline() and is_cache_miss(err):
            raise HubAccessError(cache_miss_message(what, reason)) from err
        if _in_chain(err, LocalEntryNotFoundError) is not None:  # online, but the endpoint did not deliver it
            raise HubAccessError(cache_miss_message(what, _root_reason(err), reachable=True)) from err
        missing = _in_chain(err, RepositoryNotFoundError, RevisionNotFoundError)
        if missing is not None:
            raise HubAccessError(describe_hub_error(missing, action=f"load {what}")) from err
        raise
    finally:
        root.removeFilter(quiet)


class _DropDownloadErrors(logging.Filter):
    """Drops error records logged straight on the root logger about failed downloads (open_clip logs one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "download" in record.getMessage().lower())


def describe_hub_error(err: BaseException, *, action: str, repo_id: str | None = None) -> str:
    """One line for an error of `huggingface_hub` while doing `action` (e.g. "push to me/model").

    Covers the network (unreachable, offline mode), authentication (401), permissions and names taken by someone
    else (403), conflicts (409), missing repos / revisions, invalid card metadata and other HTTP errors. The
    message is built from the status and the server's own message; request headers (the token) never appear.
    """
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = f" {repo_id}" if repo_id else ""
    if isinstance(err, OfflineModeIsEnabled):
        return f"Cannot {action}: HF_HUB_OFFLINE=1 is set; unset it to use the Hub at {hub_endpoint()}."
    if isinstance(err, RevisionNotFoundError):
        return f"Cannot {action}: the revision does not exist in{repo} ({_server_message(err)})."
    if isinstance(err, RepositoryNotFoundError):
        return (f"Cannot {action}: repository{repo} not found, or private and not visible with this token "
                "(check the name and `hf auth whoami`).")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        msg = _server_message(err)
        if status == 401:
            return (f"Cannot {action}: the Hub rejected the token (401 {msg}); log in with `hf auth login` or set "
                    "HF_TOKEN to a token with write access.")
        if status == 403:
            return (f"Cannot {action}: no write access{' to ' + repo_id if repo_id else ''} with this token (403 "
                    f"{msg}); the name may belong to another user or organisation, or the token is read-only.")
        if status == 409:
            return f"Cannot {action}: conflict (409 {msg})."
        if status == 412:
            return f"Cannot {action}: the branch moved while uploading (412 {msg}); run the command again."
        return f"Cannot {action}: the Hub answered {status} ({msg})."
    if isinstance(err, ValueError) and "Invalid metadata in README.md" in str(err):
        return f"Cannot {action}: the Hub refused the model card's metadata ({' '.join(str(err).split())})."
    return f"Cannot {action}: the Hub at {hub_endpoint()} is unreachable ({_short_reason(err)})."


def _in_chain(err: BaseException, *types: type) -> BaseException | None:
    """The first error of one of `types` in `err`'s cause / context chain."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, types):
            return e
        e = e.__cause__ or e.__context__
    return None


def _root_reason(err: BaseException) -> str:
    """The network / HTTP error at the bottom of a download failure, in a few words."""
    from huggingface_hub.errors import HfHubHTTPError

    http = _in_chain(err, HfHubHTTPError)
    if http is not None and http.response is not None:
        return f"HTTP {http.response.status_code} for {http.response.url}"
    chain, e = [], err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return _short_reason(chain[-1])


def _server_message(err) -> str:
    response = getattr(err, "response", None)
    msg = getattr(err, "server_message", None) or (response.headers.get("X-Error-Message") if response is not None
                                                   else None)
    return " ".join(str(msg or type(err).__name__).split())[:300]


def _short_reason(err: BaseException, timeout: float | None = None) -> str:
    name = type(err).__name__
    if "Timeout" in name and timeout is not None:
        return f"no answer within {timeout:g} s"
    text = " ".join(str(err).split())
    return f"{name}: {text}"[:200] if text else name


__all__ = [
    "HubAccessError", "cache_miss_message", "describe_hub_error", "hub_download", "hub_endpoint", "is_cache_miss",
    "is_offline", "needs_hub", "needs_hub_source", "probe_hub", "require_hub", "reset_probe", "set_offline",
    "use_cache_if_unreachable",
]
