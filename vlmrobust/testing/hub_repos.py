"""The local Hub server's state: repos, commits, errors, and the model-card metadata check of `/api/validate-yaml`."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

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


__all__ = ["Commit", "HubError", "Repo", "git_blob_sha", "validate_card_metadata"]
