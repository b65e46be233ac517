import pytest

from vlmrobust.hub.model_card import write_model_card
from vlmrobust.hub.push import check_publishable, push_to_hub
from vlmrobust.models import create_model


def test_push_uploads_model_card_and_weights_but_not_training_state(tiny_open_clip_dir, tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    create_model(f"local-dir:{tiny_open_clip_dir}").save_pretrained(out, method="fare")
    (out / "optimizer.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="README.md"):
        check_publishable(out)
    write_model_card(out, backend="open_clip", base_model="open_clip:ViT-B-32/openai", method="fare",
                     results_markdown="| model | clean |\n|---|---|\n| after | 90.0 |", training={"epsilon": "4/255"},
                     repo_id="me/fare-test")
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
            calls.update(folder=folder_path, msg=commit_message, ignore=ignore_patterns)
            return "https://example.invalid/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    push_to_hub(out, "me/fare-test")
    assert calls["repo"] == "me/fare-test" and calls["folder"] == str(out)
    assert "optimizer.pt" in calls["ignore"] and "fare" in calls["msg"]
    card = (out / "README.md").read_text()
    assert 'create_model_and_transforms("hf-hub:me/fare-test")' in card and "base_model: ViT-B-32" in card


def test_push_refuses_folders_without_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="known layout"):
        check_publishable(tmp_path)
    with pytest.raises(FileNotFoundError):
        check_publishable(tmp_path / "missing")


def test_cli_push_names_the_missing_model_card(tmp_path, tiny_open_clip_dir):
    from vlmrobust.cli import main

    out = tmp_path / "ckpt"
    create_model(f"local-dir:{tiny_open_clip_dir}").save_pretrained(out)
    with pytest.raises(ValueError, match="model card"):
        main(["push", str(out), "me/x"])
