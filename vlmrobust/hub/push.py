"""Publish a checkpoint folder to the Hugging Face Hub, in the layout its backend's own library loads.

Every kind of vlmrobust output goes through one path: :func:`plan_upload` decides *exactly* which files go up
(the checkpoint in its native layout, the model card regenerated for the target repo, results, reports, plots;
never training state, the pickled arguments that hold the token, or nested checkpoints such as `checkpoint-*/`
or an LVLM recipe's `sft/` starting point), `--dry-run` writes that plan to a folder, and :func:`push_to_hub` sends
it as **one commit** (`create_commit`, not `upload_folder`, which may split a large folder into several commits).
A failed push leaves nothing: no commit, and a repo created by the same call is deleted again.

Kinds come from `vlmrobust.layout` (open_clip, transformers CLIP / LLaVA / Qwen-VL, PEFT adapters, R-Adapt
anchors); a method that writes one of these layouts (GRACE merged checkpoints, DiGraP runs) needs nothing here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..layout import TRAINING_STATE_PATTERNS, detect_layout, missing_files
from ..utils.hub_access import HubAccessError, describe_hub_error, hub_endpoint, require_hub
from .card_folder import card_info_from_folder, folder_results
from .card_results import ResultRow, load_result_rows
from .model_card import ResultSource, append_result_set, build_model_card, checkpoint_kind, is_generated

#: files larger than this are weights, not text: not scanned for the token
_SCAN_LIMIT = 64 * 1024 * 1024


def check_publishable(folder: str | os.PathLike) -> str:
    """Return the layout of a checkpoint folder, or raise an error that says what is missing."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder: give the output_dir of a vlmrobust run.")
    layout = detect_layout(path)
    if layout is None or missing_files(path, layout):
        missing = f" ({layout} layout without {', '.join(missing_files(path, layout))})" if layout else ""
        raise ValueError(f"{path} holds no complete checkpoint in a known layout{missing}: open_clip_config.json + "
                         "open_clip_model.safetensors, transformers' config.json + *.safetensors, a PEFT adapter "
                         "(adapter_config.json + adapter_model.safetensors), or R-Adapt's radapt_config.json + "
                         "radapt_anchor.safetensors.")
    return layout


@dataclass
class UploadPlan:
    """What one push uploads: `files` maps each path in the repo to a local file or generated content.

    Attributes:
        folder (`Path`): the checkpoint folder.
        repo_id (`str`): target repo.
        kind (`str`): checkpoint kind (`vlmrobust.hub.model_card.KINDS`).
        revision (`str`): target branch.
        files (`dict[str, Path | bytes]`): path in repo -> source.
        skipped (`list[str]`): paths left out (training state, nested checkpoints, hidden files).
        commit_message (`str`): the commit's title.
    """

    folder: Path
    repo_id: str
    kind: str
    revision: str
    files: dict[str, Path | bytes] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    commit_message: str = ""

    def read(self, path_in_repo: str) -> bytes:
        src = self.files[path_in_repo]
        return src if isinstance(src, bytes) else src.read_bytes()

    def write_to(self, out_dir: str | os.PathLike) -> list[str]:
        """Write every file of the plan under `out_dir` (the `--dry-run` output); returns the paths written."""
        out = Path(out_dir)
        if out.resolve() == self.folder.resolve() or self.folder.resolve() in out.resolve().parents:
            raise ValueError(f"--dry-run folder {out} must not be inside the checkpoint folder {self.folder}.")
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"--dry-run folder {out} is not empty: give a new or empty folder.")
        for path in sorted(self.files):
            dst = out / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = self.files[path]
            if isinstance(src, bytes):
                dst.write_bytes(src)
            else:
                shutil.copyfile(src, dst)
        return sorted(self.files)


def _skip(rel: str) -> bool:
    parts = rel.split("/")
    if any(p.startswith(".") or p == "__pycache__" for p in parts):
        return True
    return any(fnmatch.fnmatch(p, pat) for p in parts for pat in TRAINING_STATE_PATTERNS)


def plan_upload(folder: str | os.PathLike, repo_id: str, *, revision: str | None = None,
                commit_message: str | None = None, results: tuple[str | os.PathLike, str] | None = None
                ) -> UploadPlan:
    """Decide what pushing `folder` to `repo_id` uploads; touches no network.

    The model card: a card generated by vlmrobust (or none) is (re)built for `repo_id` from the folder (kind,
    method, training settings, results through the results adapter, the recipe's notes); a card without the
    generated marker is uploaded as it is.

    Args:
        folder (`str`): checkpoint folder (the `output_dir` of a run).
        repo_id (`str`): target repo, `namespace/name`.
        revision (`str`, *optional*): target branch (default `main`).
        commit_message (`str`, *optional*): commit title.
        results (`tuple[str, str]`, *optional*): `(results file, model name)` for the card when the numbers live
            outside the folder (R-Adapt's paradigms share the recipe's `eval/`); the file is uploaded as
            `eval/results.json`.
    """
    path = Path(folder)
    check_publishable(path)
    kind = checkpoint_kind(path)
    revision = revision or "main"
    plan = UploadPlan(path, repo_id, kind, revision)
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_dir():
            continue
        nested = next((p for p in f.relative_to(path).parents if p != Path(".") and detect_layout(path / p)), None)
        if _skip(rel) or nested is not None:
            plan.skipped.append(rel)
            continue
        plan.files[rel] = f
    card = path / "README.md"
    if not card.is_file() or is_generated(card.read_text(encoding="utf-8")):
        info = card_info_from_folder(path, repo_id)
        if results is not None:
            plan.files["eval/results.json"] = Path(results[0])
            rows, base_rows, rel = load_result_rows(results[0], results[1]), [], "eval/results.json"
        else:
            rows, base_rows, found = folder_results(path)
            rel = found.relative_to(path).as_posix() if found is not None else None
        source = None
        if rel is not None:
            source = ResultSource(f"vlmrobust evaluation ({rel})",
                                  f"{hub_endpoint()}/{repo_id}/blob/{revision}/{rel}")
        plan.files["README.md"] = build_model_card(info, rows, source=source, base_rows=base_rows,
                                                   heading="Evaluation of this checkpoint").encode()
    meta = json.loads((path / "vlmrobust_config.json").read_text()) if (path / "vlmrobust_config.json").is_file() \
        else {}
    what = meta.get("method") or kind
    plan.commit_message = commit_message or f"vlmrobust {__version__}: upload {what} checkpoint ({kind})"
    return plan


def check_no_token(files: dict[str, Path | bytes], token: str | None) -> None:
    """Refuse to upload when the token appears in any file (text files up to 64 MB are read)."""
    if not token or len(token) < 8:
        return
    needle = token.encode()
    for name, src in files.items():
        if isinstance(src, Path) and src.stat().st_size > _SCAN_LIMIT:
            continue
        data = src if isinstance(src, bytes) else src.read_bytes()
        if needle in data:
            raise ValueError(f"{name} contains the Hub token: remove it from the file before pushing (nothing was "
                             "uploaded).")


def _resolve_repo_id(api, repo_id: str) -> str:
    if "/" in repo_id:
        return repo_id
    return f"{api.whoami()['name']}/{repo_id}"


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                revision: str | None = None, commit_message: str | None = None,
                dry_run: str | os.PathLike | None = None, results: tuple[str | os.PathLike, str] | None = None
                ) -> str:
    """Upload a checkpoint folder to `repo_id` as one commit; return the commit URL (or the dry-run folder).

    Creates the repo (private with `private=True`) and the branch `revision` when missing. Any failure (network,
    token, permissions, a name owned by someone else, invalid card metadata) raises :class:`HubAccessError` with
    one line; nothing is committed, and a repo this call created is deleted again.

    Args:
        folder (`str`): checkpoint folder.
        repo_id (`str`): `namespace/name` (a bare name goes to the token's user).
        private (`bool`, *optional*, defaults to `False`): create the repo as private.
        token (`str`, *optional*): Hub token; defaults to `HF_TOKEN` / the saved login. Never written or logged.
        revision (`str`, *optional*): branch to push to (created from `main` when missing).
        commit_message (`str`, *optional*): commit title.
        dry_run (`str`, *optional*): write exactly what would be uploaded to this folder instead of pushing.
        results (`tuple[str, str]`, *optional*): see :func:`plan_upload`.
    """
    if dry_run is not None:
        plan = plan_upload(folder, repo_id if "/" in repo_id else f"<user>/{repo_id}", revision=revision,
                           commit_message=commit_message, results=results)
        written = plan.write_to(dry_run)
        return (f"dry run: {len(written)} files for {plan.repo_id}@{plan.revision} written to {dry_run} "
                f"({len(plan.skipped)} left out)")
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import RepositoryNotFoundError

    check_publishable(folder)  # local mistakes first, before any network
    require_hub(f"push to {repo_id}")
    api = HfApi(token=token)
    created = False
    try:
        repo_id = _resolve_repo_id(api, repo_id)
        plan = plan_upload(folder, repo_id, revision=revision, commit_message=commit_message, results=results)
        check_no_token(plan.files, token or get_token())
        try:
            info = api.repo_info(repo_id)
            exists = True
            if private and not info.private:
                print(f"vlmrobust push: {repo_id} exists and is public; --private only applies to new repos.")
        except RepositoryNotFoundError:
            exists = False
        api.create_repo(repo_id, private=private, exist_ok=True)
        created = not exists
        if plan.revision != "main":
            api.create_branch(repo_id, branch=plan.revision, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src if isinstance(src, bytes) else str(src))
               for p, src in sorted(plan.files.items())]
        commit = api.create_commit(repo_id, operations=ops, commit_message=plan.commit_message,
                                   revision=plan.revision)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        if not _is_hub_error(err):
            _rollback(api, repo_id, created)
            raise
        raise HubAccessError(describe_hub_error(err, action=f"push to {repo_id}", repo_id=repo_id)
                             + _rollback(api, repo_id, created)) from None
    except Exception as err:
        raise HubAccessError(describe_hub_error(err, action=f"push to {repo_id}", repo_id=repo_id)
                             + _rollback(api, repo_id, created)) from None
    return str(commit.commit_url)


def _is_hub_error(err: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    return isinstance(err, HfHubHTTPError) or "Invalid metadata in README.md" in str(err)


def _rollback(api, repo_id: str, created: bool) -> str:
    """Delete a repo this push created before it failed; say what is left."""
    if not created:
        return " Nothing was uploaded."
    try:
        api.delete_repo(repo_id, missing_ok=True)
        return " Nothing was uploaded (the repo this push had created was deleted again)."
    except Exception:
        return f" Nothing was uploaded, but the empty repo {repo_id} this push created could not be deleted."


@dataclass
class HubTarget:
    """Where a recipe pushes its output: the `push_to_hub` / `hub_*` training arguments, taken over."""

    repo_id: str
    private: bool = False
    revision: str | None = None
    token: str | None = field(default=None, repr=False)

    def push(self, folder: str | os.PathLike, suffix: str = "", **kwargs) -> str:
        """Push `folder` to this repo (`suffix` appended to its name); prints and returns the commit URL."""
        url = push_to_hub(folder, self.repo_id + suffix, private=self.private, revision=self.revision,
                          token=self.token, **kwargs)
        print(f"[vlmrobust] pushed {folder} to the Hub: {url}")
        return url


def take_hub_push(args) -> HubTarget | None:
    """Take `push_to_hub=True` away from the `Trainer` and return where the recipe pushes its finished output.

    transformers' own push would upload every save (training state, the pickled arguments) with its own card;
    a recipe instead pushes the finished `output_dir` once, through :func:`push_to_hub`, like `vlmrobust push`.
    The token is removed from `args`, so nothing the run writes can contain it.

    Args:
        args (`TrainingArguments`): `push_to_hub`, `hub_model_id` (default: the output folder's name in the
            token's namespace), `hub_private_repo`, `hub_revision` and `hub_token` are read.
    """
    if not getattr(args, "push_to_hub", False):
        return None
    target = HubTarget(args.hub_model_id or Path(args.output_dir).name, bool(args.hub_private_repo),
                       args.hub_revision, args.hub_token)
    args.push_to_hub, args.hub_token = False, None
    return target


def hub_model_repo(model_id: str) -> str:
    """The Hub repo behind a `create_model` id (`hf-hub:org/x`, `hf-clip:org/x`, `llava:org/x`, `qwen_vl:org/x`,
    `paligemma:org/x`)."""
    prefix, _, spec = model_id.partition(":")
    if prefix in ("hf-hub", "hf-clip", "llava", "qwen_vl", "paligemma") and spec.count("/") == 1 \
            and not Path(spec).expanduser().exists():
        return spec
    raise ValueError(f"--update-card needs a model on the Hub (hf-hub:<org>/<name>, hf-clip:<org>/<name>, "
                     f"llava:<org>/<name>, qwen_vl:<org>/<name> or paligemma:<org>/<name>), not {model_id!r}.")


def check_can_write(repo_id: str, *, token: str | None = None) -> None:
    """Fail now, in one line, when `repo_id` exists but cannot be written with this token (before a long evaluation
    that ends in an upload): Hub reachable, token accepted, repo visible, namespace the token's user or one of its
    organisations."""
    from huggingface_hub import HfApi

    action = f"update the card of {repo_id}"
    require_hub(action)
    api = HfApi(token=token)
    try:
        me = api.whoami()
        api.repo_info(repo_id)
    except Exception as err:
        raise HubAccessError(describe_hub_error(err, action=action, repo_id=repo_id)) from None
    namespaces = {me.get("name")} | {o.get("name") for o in me.get("orgs") or []}
    if repo_id.split("/")[0] not in namespaces:
        raise HubAccessError(f"Cannot {action}: the token's user {me.get('name')!r} cannot write to "
                             f"{repo_id.split('/')[0]!r}; use a token of that user or organisation.")


def update_card(repo_id: str, rows: list[ResultRow], results_file: str | os.PathLike, *, suite: str,
                token: str | None = None, revision: str | None = None) -> str:
    """Append a result set to the card of `repo_id`, uploading the results file with it in one commit.

    The results file goes to `eval/<suite>-<UTC time>/results.json`; the card's new `model-index` entries name it
    as their source. Returns the commit URL.

    Args:
        repo_id (`str`): the model's repo.
        rows (`list[ResultRow]`): the new numbers (from the results adapter).
        results_file (`str`): the results file they come from.
        suite (`str`): suite name (titles the result set).
        token (`str`, *optional*): Hub token (write access).
        revision (`str`, *optional*): branch (default `main`).
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token, hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    action = f"update the card of {repo_id}"
    require_hub(action)
    if not rows:
        raise HubAccessError(f"Cannot {action}: the results hold no numbers for this model.")
    revision = revision or "main"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path_in_repo = f"eval/{suite}-{stamp}/results.json"
    api = HfApi(token=token)
    try:
        try:
            text = Path(hf_hub_download(repo_id, "README.md", revision=revision, token=token)).read_text("utf-8")
        except RemoteEntryNotFoundError:
            text = f"# {repo_id}\n"
        source = ResultSource(f"vlmrobust {__version__}, suite {suite}, {time.strftime('%Y-%m-%d', time.gmtime())}",
                              f"{hub_endpoint()}/{repo_id}/blob/{revision}/{path_in_repo}")
        new_text = append_result_set(text, rows, source, repo_id=repo_id, heading=f"Suite {suite} ({stamp} UTC)")
        files = {"README.md": new_text.encode(), path_in_repo: Path(results_file).read_bytes()}
        check_no_token(files, token or get_token())
        commit = api.create_commit(
            repo_id, revision=revision, commit_message=f"vlmrobust {__version__}: add suite {suite} results to the card",
            operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=b) for p, b in files.items()])
    except ValueError as err:
        if not _is_hub_error(err):
            raise
        raise HubAccessError(describe_hub_error(err, action=action, repo_id=repo_id) + " The card is unchanged.") \
            from None
    except Exception as err:
        raise HubAccessError(describe_hub_error(err, action=action, repo_id=repo_id) + " The card is unchanged.") \
            from None
    return str(commit.commit_url)


__all__ = ["HubTarget", "UploadPlan", "check_can_write", "check_no_token", "check_publishable", "hub_model_repo",
           "plan_upload", "push_to_hub", "take_hub_push", "update_card"]
