"""The local Hub-compatible server against the real huggingface_hub client (what vlmrobust's Hub tests stand on)."""

import os
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from vlmrobust.testing.hub_server import LeftTheLocalHub, git_blob_sha, local_hub

TOKEN, OTHER = "hf_test_alice_0123456789", "hf_test_bob_0123456789"


@pytest.fixture(scope="module")
def hub():
    with local_hub(tokens={TOKEN: "alice", OTHER: "bob"}, orgs={"robust-lab": ["alice"]},
                   read_only_tokens={"hf_test_ro_0123456789": "alice"}) as server:
        yield server


def test_repos_commits_and_downloads_with_the_real_client(hub, tmp_path):
    api = HfApi(token=TOKEN)
    assert api.whoami()["name"] == "alice"
    url = api.create_repo("robust-lab/m1")
    assert url.repo_id == "robust-lab/m1" and url.endswith("/robust-lab/m1")
    assert api.create_repo("robust-lab/m1", exist_ok=True).repo_id == "robust-lab/m1"
    with pytest.raises(HfHubHTTPError, match="409"):
        api.create_repo("robust-lab/m1")
    info = api.create_commit("robust-lab/m1", commit_message="add", operations=[
        CommitOperationAdd("config.json", b'{"a": 1}'), CommitOperationAdd("w/model.bin", b"\0" * 1000)])
    assert info.oid == api.model_info("robust-lab/m1").sha and len(info.oid) == 40
    assert api.list_repo_files("robust-lab/m1") == [".gitattributes", "config.json", "w/model.bin"]
    tree = {f.path: f for f in api.list_repo_tree("robust-lab/m1", recursive=True)}
    assert tree["w/model.bin"].size == 1000 and tree["config.json"].blob_id == git_blob_sha(b'{"a": 1}')
    path = hf_hub_download("robust-lab/m1", "w/model.bin")
    assert Path(path).read_bytes() == b"\0" * 1000 and info.oid in path  # cached under the commit X-Repo-Commit named
    snap = snapshot_download("robust-lab/m1")
    assert sorted(p.name for p in Path(snap).iterdir()) == [".gitattributes", "config.json", "w"]
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("robust-lab/m1", "missing.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("robust-lab/m1", "config.json", revision="nope")
    assert api.file_exists("robust-lab/m1", "config.json") and not api.file_exists("robust-lab/m1", "x")
    # upload_folder (the client's own folder upload) goes through the same preupload + commit endpoints
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.json").write_text("{}")
    api.upload_folder(repo_id="robust-lab/m1", folder_path=tmp_path, commit_message="folder")
    assert "sub/r.json" in api.list_repo_files("robust-lab/m1")
    assert [c.title for c in api.list_repo_commits("robust-lab/m1")] == ["folder", "add", "initial commit"]
    assert hub.unhandled == []


def test_branches_private_repos_and_permissions(hub, tmp_path):
    api = HfApi(token=TOKEN)
    api.create_repo("alice/private", private=True)
    api.upload_file(path_or_fileobj=b"main", path_in_repo="f.txt", repo_id="alice/private")
    api.create_branch("alice/private", branch="dev")
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="f.txt", repo_id="alice/private", revision="dev")
    assert Path(hf_hub_download("alice/private", "f.txt", revision="dev", token=TOKEN)).read_bytes() == b"dev"
    assert Path(hf_hub_download("alice/private", "f.txt", token=TOKEN, force_download=True)).read_bytes() == b"main"
    assert {b.name for b in api.list_repo_refs("alice/private").branches} == {"main", "dev"}
    assert api.model_info("alice/private").private is True
    for token in (False, OTHER):  # anonymous and another user: as if it did not exist
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).model_info("alice/private")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/private", "f.txt", token=token, cache_dir=tmp_path / str(token))
    with pytest.raises(HfHubHTTPError, match="403"):  # bob cannot write in alice's namespace
        HfApi(token=OTHER).create_repo("alice/by-bob")
    with pytest.raises(HfHubHTTPError, match="403"):  # a read-only token cannot commit
        HfApi(token="hf_test_ro_0123456789").upload_file(path_or_fileobj=b"x", path_in_repo="g", repo_id="alice/private")
    with pytest.raises(HfHubHTTPError, match="401"):
        HfApi(token="hf_wrong_0123456789").create_repo("alice/nope")
    assert ("model", "alice/nope") not in hub.repos and ("model", "alice/by-bob") not in hub.repos


def test_a_commit_applies_entirely_or_not_at_all(hub):
    api = HfApi(token=TOKEN)
    api.create_repo("alice/atomic")
    before = api.model_info("alice/atomic").sha
    with pytest.raises(RemoteEntryNotFoundError):  # the second operation fails: the first is not applied either
        api.create_commit("alice/atomic", commit_message="bad", operations=[
            CommitOperationAdd("a.txt", b"a"), CommitOperationDelete("does-not-exist.txt")])
    hub.fail("POST", r"/commit/", 500)
    with pytest.raises(HfHubHTTPError, match="500"):
        api.create_commit("alice/atomic", commit_message="fails", operations=[CommitOperationAdd("b.txt", b"b")])
    assert api.model_info("alice/atomic").sha == before and api.list_repo_files("alice/atomic") == [".gitattributes"]


def test_local_hub_points_the_client_at_the_server_and_restores_it():
    import huggingface_hub
    import huggingface_hub.constants as c
    from transformers.utils import hub as tf_hub

    tf_api = tf_hub.hf_api()  # transformers' shared HfApi, built before the local Hub (as in a long test session)
    before = (c.ENDPOINT, c.HF_HUB_OFFLINE, os.environ.get("HF_ENDPOINT"), huggingface_hub.hf_api.api.endpoint)
    with local_hub() as server:
        assert c.ENDPOINT == server.url == os.environ["HF_ENDPOINT"] and not c.HF_HUB_OFFLINE
        assert c.HF_HUB_CACHE.startswith(os.environ["HF_HOME"])
        assert huggingface_hub.hf_api.api.endpoint == server.url  # `huggingface_hub.file_exists` & co.
        assert tf_hub.hf_api().endpoint == server.url
    assert (c.ENDPOINT, c.HF_HUB_OFFLINE, os.environ.get("HF_ENDPOINT"), huggingface_hub.hf_api.api.endpoint) == before
    assert tf_hub.hf_api() is tf_api
    with local_hub():  # anything that still points elsewhere fails at once instead of retrying the real Hub
        with pytest.raises(LeftTheLocalHub, match="inside local_hub"):
            HfApi(endpoint="https://huggingface.co").model_info("openai/clip-vit-base-patch32")
