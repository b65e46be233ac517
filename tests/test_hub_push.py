"""`vlmrobust push` and `eval --update-card` against the local Hub with the real huggingface_hub client: one commit per
push, checkpoints that plain open_clip / transformers / peft load back with identical outputs, branches, private
repos, dry runs, failures that leave nothing, and a token that is never written or logged."""

import dataclasses
import json
import logging
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from vlmrobust.cli import main
from vlmrobust.hub.card_results import load_result_rows, rows_from_results
from vlmrobust.hub.model_card import parse_card, rows_from_model_index
from vlmrobust.hub.push import check_publishable, plan_upload, push_to_hub, take_hub_push
from vlmrobust.models import create_model
from vlmrobust.testing.hub_server import local_hub
from vlmrobust.utils.hub_access import HubAccessError

TOKEN, BOB = "hf_test_alice_secret_0123456789", "hf_test_bob_secret_0123456789"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def hub():
    with local_hub(tokens={TOKEN: "alice", BOB: "bob"}) as server:
        yield server


def _nudge(module: torch.nn.Module, seed: int = 1) -> None:
    """Change every weight a little, so a round trip cannot pass by loading the base model's weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _same(rows, expected) -> bool:
    """Equal rows, values to the card's precision (percentages with 2 decimals)."""
    strip = [dataclasses.replace(r, value=0.0) for r in rows]
    return strip == [dataclasses.replace(r, value=0.0) for r in expected] and \
        [r.value for r in rows] == pytest.approx([r.value for r in expected], abs=5e-5)


def _results(models=("before", "after")) -> dict:
    cells = {}
    for i, m in enumerate(models):
        cells[f"{m}|digits|clean"] = {"kind": "clean", "model": m, "dataset": "digits", "accuracy": 0.5 + i / 4,
                                      "n": 16}
        cells[f"{m}|digits|apgd-ce|Linf|0.0156863"] = {
            "kind": "attack", "model": m, "dataset": "digits", "attack": "apgd-ce", "norm": "Linf", "eps": 4 / 255,
            "steps": 2, "accuracy": 0.25 * i, "n": 16}
    return {"format": "vlmrobust.eval/v1", "models": list(models), "cells": cells,
            "suite": {"name": "recipe-digits", "datasets": [{"name": "digits", "source": "digits", "split": "test"}]}}


@pytest.fixture
def fare_dir(tmp_path, tiny_open_clip_dir):
    """A FARE-like output folder in open_clip's layout, with the training state a real run leaves next to it."""
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    _nudge(model.model.visual)
    out = tmp_path / "fare"
    model.save_pretrained(out, method="fare", config={"epsilon": 4 / 255, "attack_norm": "Linf", "attack": "pgd",
                                                      "attack_steps": 10, "max_steps": 12, "learning_rate": 1e-5})
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text(json.dumps(_results()))
    for junk in ("optimizer.pt", "scheduler.pt", "rng_state_0.pth", "training_args.bin", "trainer_state.json",
                 ".DS_Store"):
        (out / junk).write_bytes(b"x")
    model.save_pretrained(out / "checkpoint-6")  # an intermediate checkpoint: not part of the release
    return out


def test_push_is_one_commit_that_plain_open_clip_loads_with_identical_outputs(hub, fare_dir):
    url = push_to_hub(fare_dir, "alice/fare-tiny", token=TOKEN)
    commits = hub.commits("alice/fare-tiny")
    assert len(commits) == 2 and commits[0].oid in url and commits[0].author == "alice"  # initial + ours
    files = hub.files("alice/fare-tiny")
    assert set(files) == {".gitattributes", "README.md", "open_clip_config.json", "open_clip_model.safetensors",
                          "vlmrobust_config.json", "eval/results.json"}
    assert files["open_clip_model.safetensors"] == (fare_dir / "open_clip_model.safetensors").read_bytes()
    # plain open_clip, no vlmrobust: same weights, same outputs
    hub_model, _, hub_pre = open_clip.create_model_and_transforms("hf-hub:alice/fare-tiny")
    local, _, _ = open_clip.create_model_and_transforms(f"local-dir:{fare_dir}")
    x = torch.rand(2, 3, 32, 32)
    text = open_clip.get_tokenizer("hf-hub:alice/fare-tiny")(["a photo of a cat", "a dog"])
    with torch.no_grad():
        assert torch.equal(hub_model.eval().encode_image(x), local.eval().encode_image(x))
        assert torch.equal(hub_model.encode_text(text), local.encode_text(text))
    # the card: metadata the Hub parses, this checkpoint's numbers ("after"), the base model's beside them
    card = ModelCard.load("alice/fare-tiny")
    assert card.data.library_name == "open_clip" and card.data.model_name == "alice/fare-tiny"
    meta, body = parse_card(files["README.md"].decode())
    assert _same(rows_from_model_index(meta["model-index"]), rows_from_results(_results(), "after"))
    assert meta["model-index"][0]["results"][0]["source"]["url"].endswith("/alice/fare-tiny/blob/main/"
                                                                          "eval/results.json")
    assert 'create_model_and_transforms("hf-hub:alice/fare-tiny")' in body and "| 25.0 | 0.0 |" in body
    assert meta["vlmrobust"]["training"]["threat model (training)"] == "Linf, ε = 4/255"
    # the folder itself is untouched
    assert not (fare_dir / "README.md").exists()


def test_vlmrobust_reads_a_pushed_checkpoint_back_by_hub_id_and_updates_its_card(hub, fare_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    push_to_hub(fare_dir, "alice/evalme", token=TOKEN)
    suite = tmp_path / "tiny_suite.yaml"
    suite.write_text("name: tiny-digits\ndatasets:\n  - name: digits\n    source: digits\n    templates: digits\n"
                     "    split: test\n    n_samples: 12\n    batch_size: 12\n    attacks:\n"
                     "      - attack: apgd-ce\n        norm: Linf\n        eps: [4/255]\n        steps: 2\n")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "eval"
    assert main(["eval", "--model", "hf-hub:alice/evalme", "--suite", str(suite), "--output", str(out),
                 "--no-progress", "--update-card"]) == 0
    assert "Added the results to the model card" in capsys.readouterr().out
    commits = hub.commits("alice/evalme")
    assert len(commits) == 3 and commits[0].title.startswith("vlmrobust") and "tiny-digits" in commits[0].title
    files = hub.files("alice/evalme")
    uploaded = [p for p in files if p.startswith("eval/tiny-digits-")]
    assert len(uploaded) == 1 and files[uploaded[0]] == (out / "results.json").read_bytes()
    meta, body = parse_card(files["README.md"].decode())
    results = meta["model-index"][0]["results"]
    assert len(results) == 2 and results[1]["source"]["url"].endswith(uploaded[0])  # the push's set is kept
    new_rows = load_result_rows(out / "results.json", "hf-hub:alice/evalme")
    assert len(new_rows) == 2 and _same(rows_from_model_index([{"name": "x", "results": results[1:]}]), new_rows)
    assert "### Suite tiny-digits" in body
    ModelCard(files["README.md"].decode()).validate()
    # before evaluating anything: a local model, or a Hub model the token cannot write to, is refused in one line
    monkeypatch.setenv("HF_TOKEN", BOB)
    for model, say in (("hf-hub:alice/evalme", "cannot write to 'alice'"), (f"local-dir:{fare_dir}", "on the Hub")):
        assert main(["eval", "--model", model, "--suite", str(suite), "--output", str(tmp_path / "no"),
                     "--update-card"]) == 2
        assert say in capsys.readouterr().err
    assert not (tmp_path / "no").exists() and len(hub.commits("alice/evalme")) == 3


def test_transformers_clip_round_trip(hub, tiny_hf_clip_dir, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    model = create_model(f"hf-clip:{tiny_hf_clip_dir}")
    _nudge(model.model.vision_model)
    out = tmp_path / "tecoa-hf"
    model.save_pretrained(out, method="tecoa")
    push_to_hub(out, "alice/tecoa-hf", token=TOKEN)
    proc = CLIPProcessor.from_pretrained("alice/tecoa-hf")
    inputs = proc(text=["a cat", "a dog"], images=[_shape_image(32)] * 2, return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = CLIPModel.from_pretrained("alice/tecoa-hf").eval()(**inputs).logits_per_image
        ref = CLIPModel.from_pretrained(out).eval()(**inputs).logits_per_image
    assert torch.equal(ours, ref)
    back = create_model("hf-clip:alice/tecoa-hf")  # and vlmrobust's own loader, by Hub id
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(back.encode_image(x), create_model(f"hf-clip:{out}").encode_image(x))
    assert "CLIPModel.from_pretrained(\"alice/tecoa-hf\")" in hub.files("alice/tecoa-hf")["README.md"].decode()


def _shape_image(size):
    from PIL import Image

    return Image.fromarray((torch.rand(size, size, 3) * 255).to(torch.uint8).numpy())


def test_llava_full_weights_and_lora_adapter_round_trip(hub, tmp_path):
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlmrobust.testing import build_tiny_llava

    base_dir = build_tiny_llava(tmp_path / "base")
    full = create_model(f"llava:{base_dir}")
    _nudge(full.hf_model.model.vision_tower)
    full.save_pretrained(tmp_path / "full", method="fare")
    lora = create_model(f"llava:{base_dir}", lora_r=4)
    _nudge(torch.nn.ParameterList([p for n, p in lora.model.named_parameters() if "lora_B" in n]))
    lora.save_pretrained(tmp_path / "lora")
    assert check_publishable(tmp_path / "lora") == "peft"
    push_to_hub(tmp_path / "full", "alice/llava-fare", token=TOKEN)
    push_to_hub(tmp_path / "lora", "alice/llava-lora", token=TOKEN)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(hub.files("alice/llava-lora"))

    proc = AutoProcessor.from_pretrained("alice/llava-fare")
    enc = proc(text=["USER: <image>\nwhat shape is this? ASSISTANT:"], images=[_shape_image(32)], return_tensors="pt")
    with torch.no_grad():
        ours = LlavaForConditionalGeneration.from_pretrained("alice/llava-fare").eval()(**enc).logits
        ref = LlavaForConditionalGeneration.from_pretrained(tmp_path / "full").eval()(**enc).logits
        assert torch.equal(ours, ref)
        adapted = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(base_dir),
                                            "alice/llava-lora").eval()(**enc).logits
        local = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(base_dir),
                                          tmp_path / "lora").eval()(**enc).logits
        plain = LlavaForConditionalGeneration.from_pretrained(base_dir).eval()(**enc).logits
    assert torch.equal(adapted, local) and not torch.allclose(adapted, plain)
    card = hub.files("alice/llava-lora")["README.md"].decode()
    assert "library_name: peft" in card and 'PeftModel.from_pretrained(base, "alice/llava-lora")' in card


def test_qwen_vl_round_trip(hub, tmp_path):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from vlmrobust.testing import build_tiny_qwen2_vl

    model = create_model(f"qwen_vl:{build_tiny_qwen2_vl(tmp_path / 'base')}")
    _nudge(model.hf_model.model.visual)
    model.save_pretrained(tmp_path / "q", method="fare")
    push_to_hub(tmp_path / "q", "alice/qwen-fare", token=TOKEN)
    proc = AutoProcessor.from_pretrained("alice/qwen-fare")
    enc = proc(text=[model.prompt("what colour is the shape?")], images=[_shape_image(56)], return_tensors="pt")
    with torch.no_grad():
        ours = Qwen2VLForConditionalGeneration.from_pretrained("alice/qwen-fare").eval()(**enc).logits
        ref = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "q").eval()(**enc).logits
    assert torch.equal(ours, ref)
    assert "Qwen2VLForConditionalGeneration" in hub.files("alice/qwen-fare")["README.md"].decode()


def test_radapt_anchors_round_trip(hub, tiny_open_clip_dir, tmp_path):
    from vlmrobust.models.radapt import RAdaptModel

    base = create_model(f"local-dir:{tiny_open_clip_dir}").eval().requires_grad_(False)
    m = RAdaptModel.training_free(base, alpha=0.8).eval()
    with torch.no_grad():
        m.anchor().add_(0.1)
    m.save_pretrained(tmp_path / "ra")
    push_to_hub(tmp_path / "ra", "alice/radapt", token=TOKEN)
    x = torch.rand(2, 3, 32, 32)
    ours = create_model("radapt:" + snapshot_download("alice/radapt")).eval().encode_image(x)
    assert torch.equal(ours, create_model(f"radapt:{tmp_path / 'ra'}").eval().encode_image(x))
    card = hub.files("alice/radapt")["README.md"].decode()
    assert "R-Adapt" in card and "snapshot_download" in card and "arXiv:2603.12799" in card


def test_branches_and_private_repos(hub, fare_dir, tmp_path):
    assert main(["push", str(fare_dir), "alice/priv", "--private", "--revision", "dev"]) == 2  # no token yet
    assert ("model", "alice/priv") not in hub.repos
    push_to_hub(fare_dir, "alice/priv", private=True, revision="dev", token=TOKEN)
    assert set(hub.files("alice/priv", "main")) == {".gitattributes"}  # main untouched
    assert "open_clip_model.safetensors" in hub.files("alice/priv", "dev")
    assert HfApi(token=TOKEN).model_info("alice/priv").private is True
    for token in (False, BOB):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).model_info("alice/priv")
    path = snapshot_download("alice/priv", revision="dev", token=TOKEN, cache_dir=tmp_path / "c")
    assert (Path(path) / "open_clip_model.safetensors").read_bytes() == \
        (fare_dir / "open_clip_model.safetensors").read_bytes()


def test_dry_run_writes_exactly_what_a_push_uploads(hub, fare_dir, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)  # a dry run needs no network
    staged = tmp_path / "staged"
    assert main(["push", str(fare_dir), "alice/dry", "--dry-run", str(staged)]) == 0
    assert "written to" in capsys.readouterr().out
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    push_to_hub(fare_dir, "alice/dry", token=TOKEN)
    uploaded = {k: v for k, v in hub.files("alice/dry").items() if k != ".gitattributes"}
    written = {p.relative_to(staged).as_posix(): p.read_bytes() for p in staged.rglob("*") if p.is_file()}
    assert written == uploaded
    assert main(["push", str(fare_dir), "alice/dry", "--dry-run", str(staged)]) == 2  # never into a used folder


def test_token_never_reaches_files_logs_or_requests(hub, fare_dir, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    assert main(["push", str(fare_dir), "alice/tok", "--private", "--dry-run", str(tmp_path / "staged")]) == 0
    assert main(["push", str(fare_dir), "alice/tok", "--private"]) == 0
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text, repr(hub.requests)]
    texts += [p.read_bytes().decode("latin-1") for d in (fare_dir, tmp_path / "staged") for p in d.rglob("*")
              if p.is_file() and p.name != "training_args.bin"]  # (left out of every upload, checked below)
    texts += [v.decode("latin-1") for v in hub.files("alice/tok").values()]
    assert texts and not any(TOKEN in t for t in texts)
    assert "training_args.bin" not in hub.files("alice/tok")
    # a file that does contain the token is refused before anything is created
    (fare_dir / "eval" / "notes.txt").write_text(f"token={TOKEN}\n")
    with pytest.raises(ValueError, match="notes.txt contains the Hub token") as info:
        push_to_hub(fare_dir, "alice/tok2", token=TOKEN)
    assert TOKEN not in str(info.value) and ("model", "alice/tok2") not in hub.repos


def test_recipe_push_to_hub_goes_through_vlmrobust_push(hub, tiny_open_clip_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "recipes"))
    import fare_clip

    out = tmp_path / "recipe"
    fare_clip.main(["--config", str(ROOT / "recipes/configs/quickstart.yaml"), "--model_name_or_path",
                    f"local-dir:{tiny_open_clip_dir}", "--output_dir", str(out), "--max_steps", "2", "--save_steps",
                    "1", "--logging_steps", "1", "--eval_max_samples", "12", "--eval_attack_steps", "2",
                    "--eval_epsilons", "4/255", "--disable_tqdm", "true", "--push_to_hub", "true",
                    "--hub_model_id", "alice/recipe-fare", "--hub_token", TOKEN, "--hub_private_repo", "true"])
    assert len(hub.commits("alice/recipe-fare")) == 2  # one commit, at the end (not one per save)
    files = hub.files("alice/recipe-fare")
    assert not any(p.startswith("checkpoint-") or p.endswith(".bin") for p in files)
    assert {"open_clip_model.safetensors", "README.md", "results.json", "report.md"} <= set(files)
    assert hub.repos[("model", "alice/recipe-fare")].private
    meta, _ = parse_card(files["README.md"].decode())
    assert meta["model-index"][0]["name"] == "alice/recipe-fare"
    # the card's numbers are the recipe's `after` row (the pushed checkpoint), read from its v2 results.json
    results = meta["model-index"][0]["results"]
    assert results and all(m["value"] is not None for r in results for m in r["metrics"])
    assert all(TOKEN.encode() not in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_lvlm_recipe_push_to_hub_uploads_the_llava_checkpoint_with_its_card(hub, tmp_path):
    """`push_to_hub=True` in the LVLM recipe: one commit at the end with the transformers LLaVA checkpoint, the
    results file and a card whose model-index holds the trained model's VQA numbers; the download loads with plain
    transformers and gives the saved model's logits."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import fare_llava
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "llava"
    fare_llava.main(["--config", str(ROOT / "recipes/configs/quickstart_llava.yaml"), "--output_dir", str(out),
                     "--sft_steps", "0", "--train_samples", "8", "--max_steps", "1", "--per_device_train_batch_size",
                     "4", "--attack_steps", "1", "--eval_samples", "6", "--eval_batch_size", "6",
                     "--eval_attack_steps", "1", "--eval_epsilons", "8/255", "--save_strategy", "no",
                     "--disable_tqdm", "true", "--push_to_hub", "true", "--hub_model_id", "alice/llava-fare-recipe",
                     "--hub_token", TOKEN])
    assert len(hub.commits("alice/llava-fare-recipe")) == 2  # the initial commit and the push
    files = hub.files("alice/llava-fare-recipe")
    assert {"config.json", "model.safetensors", "README.md", "results.json"} <= set(files)
    assert not any(p.startswith("checkpoint-") or p.endswith(".bin") for p in files)
    meta, _ = parse_card(files["README.md"].decode())
    expected = load_result_rows(out / "results.json", "after")
    assert expected and _same(rows_from_model_index(meta["model-index"]), expected)
    assert {r.metric for r in expected} == {"vqa_accuracy"} and any(r.attack for r in expected)
    path = snapshot_download("alice/llava-fare-recipe", token=TOKEN, cache_dir=tmp_path / "c")
    enc = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with torch.no_grad():
        down = LlavaForConditionalGeneration.from_pretrained(path).eval()(**enc).logits
        local = LlavaForConditionalGeneration.from_pretrained(out).eval()(**enc).logits
    assert torch.equal(down, local)
    assert all(TOKEN.encode() not in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_radapt_recipe_pushes_each_paradigm_with_its_numbers(hub, tiny_open_clip_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "recipes"))
    import radapt_clip

    out = tmp_path / "ra"
    radapt_clip.main(["--config", str(ROOT / "recipes/configs/quickstart_radapt.yaml"), "--model_name_or_path",
                      f"local-dir:{tiny_open_clip_dir}", "--output_dir", str(out), "--paradigm", "training-free",
                      "--guide_model", "", "--eval_guide", "false", "--eval_before", "false",
                      "--eval_max_samples", "12", "--eval_attack_steps", "2", "--eval_epsilons", "4/255",
                      "--disable_tqdm", "true", "--push_to_hub", "true", "--hub_model_id", "alice/ra-tiny",
                      "--hub_token", TOKEN])
    files = hub.files("alice/ra-tiny")
    assert {"radapt_config.json", "radapt_anchor.safetensors", "eval/results.json", "README.md"} <= set(files)
    meta, _ = parse_card(files["README.md"].decode())
    rows = rows_from_model_index(meta["model-index"])
    assert _same(rows, rows_from_results(json.loads(files["eval/results.json"]), "R-Adapt (training-free)"))
    assert meta["vlmrobust"]["method"] == "radapt" and len(hub.commits("alice/ra-tiny")) == 2


def test_take_hub_push_disarms_the_trainers_own_push(tmp_path):
    from vlmrobust.trainers import FAREConfig

    args = FAREConfig(output_dir=str(tmp_path / "my-run"), push_to_hub=True, hub_token=TOKEN, use_cpu=True)
    target = take_hub_push(args)
    assert target.repo_id == "my-run" and target.token == TOKEN and TOKEN not in repr(target)
    assert args.push_to_hub is False and args.hub_token is None
    assert TOKEN not in json.dumps(args.to_vlmrobust_dict())
    assert take_hub_push(FAREConfig(output_dir=str(tmp_path), use_cpu=True)) is None


def test_failures_say_one_line_and_leave_nothing(hub, fare_dir, monkeypatch, capsys):
    # a rejected token: nothing is created
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_0123456789")
    assert main(["push", str(fare_dir), "alice/fail"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rejected the token" in err and "hf auth login" in err
    assert ("model", "alice/fail") not in hub.repos
    # a name that belongs to someone else: their repo is untouched
    hub.create_repo("bob/taken")
    with pytest.raises(HubAccessError, match="no write access to bob/taken") as info:
        push_to_hub(fare_dir, "bob/taken", token=TOKEN)
    assert "\n" not in str(info.value) and set(hub.files("bob/taken")) == {".gitattributes"}
    # the commit fails (Hub error, connection dropped): no commit, and the repo this push created is gone again
    hub.fail("POST", r"/api/models/alice/broken/commit/", 500)
    with pytest.raises(HubAccessError, match="Nothing was uploaded .the repo this push had created was deleted"):
        push_to_hub(fare_dir, "alice/broken", token=TOKEN)
    assert ("model", "alice/broken") not in hub.repos
    # an existing repo keeps exactly what it had
    push_to_hub(fare_dir, "alice/kept", token=TOKEN)
    before = hub.files("alice/kept")
    push_to_hub(fare_dir, "alice/kept", token=TOKEN)  # nothing changed: no empty commit either
    assert len(hub.commits("alice/kept")) == 2
    (fare_dir / "eval" / "report.md").write_text("a new report\n")
    hub.fail("POST", r"/api/models/alice/kept/commit/", 503)
    with pytest.raises(HubAccessError, match="Nothing was uploaded"):
        push_to_hub(fare_dir, "alice/kept", token=TOKEN, commit_message="second")
    assert hub.files("alice/kept") == before and len(hub.commits("alice/kept")) == 2
    # local mistakes are said before any network
    assert main(["push", str(fare_dir / "eval"), "alice/x"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_plan_leaves_out_training_state_and_nested_checkpoints(fare_dir):
    (fare_dir / "sft").mkdir()
    (fare_dir / "sft" / "config.json").write_text("{}")  # an LVLM recipe's SFT starting point: another model
    plan = plan_upload(fare_dir, "me/x")
    assert set(plan.files) == {"README.md", "open_clip_config.json", "open_clip_model.safetensors",
                               "vlmrobust_config.json", "eval/results.json"}
    assert {"optimizer.pt", "training_args.bin", "checkpoint-6/open_clip_model.safetensors", "sft/config.json",
            ".DS_Store"} <= set(plan.skipped)
    (fare_dir / "README.md").write_text("# my own card\n")  # a card without the marker is the user's: kept as is
    assert plan_upload(fare_dir, "me/x").read("README.md") == b"# my own card\n"
