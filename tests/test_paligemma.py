"""The `paligemma` backend on the tiny offline PaliGemma (SigLIP + Gemma): `paligemma:<dir>` is plain transformers
`from_pretrained`; the batches are PaliGemmaProcessor's prefix-LM layout (image tokens, `<bos>`, "answer en <q>\\n" as
the prefix with `token_type_ids` 0, answer + `<eos>` as the suffix with 1); the answer loss is the CE of the suffix
only; LoRA on q/k/v/o (and the projector); DiGraP VQA trains it; the VQA evaluation runs on it.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoProcessor, PaliGemmaForConditionalGeneration

from vlmrobust.data.shapes_vqa import ShapesVQA
from vlmrobust.eval.vqa import evaluate_vqa
from vlmrobust.models import create_model
from vlmrobust.models.lora import add_lvlm_lora
from vlmrobust.testing.tiny_paligemma import build_tiny_paligemma
from vlmrobust.trainers import METHODS
from vlmrobust.trainers.digrap_vqa_config import DiGraPVQAConfig
from vlmrobust.trainers.digrap_vqa_trainer import DiGraPVQATrainer
from vlmrobust.trainers.grace_vqa_trainer import pooled_image_features
from vlmrobust.vlm_recipe_main import VQAPixels

QUESTIONS = ["what colour is the circle?", "how many shapes are there?"]
ANSWERS = ["red", "two"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return build_tiny_paligemma(tmp_path_factory.mktemp("tiny-paligemma"), seed=3)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in QUESTIONS]


def test_loads_with_plain_from_pretrained_and_gives_the_same_logits(saved, images):
    model = create_model(f"paligemma:{saved}")
    assert model.backend == "paligemma" and model.image_size == 32
    plain = PaliGemmaForConditionalGeneration.from_pretrained(saved).eval()
    processor = AutoProcessor.from_pretrained(saved)
    ref = processor(images=images, text=["<image>" + model.prompt(q) for q in QUESTIONS], suffix=ANSWERS,
                    return_tensors="pt", padding="longest")
    # the [0, 1] pixels of `preprocess` normalised inside the model are the processor's pixel_values
    x = torch.stack([model.preprocess(im) for im in images])
    assert x.shape == (2, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(model.pixel_inputs(x)["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)
    batch = model.build_batch(QUESTIONS, ANSWERS, padding_side="left")  # the processor pads on the left
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert torch.equal(batch[key], ref[key]), key
    with torch.no_grad():
        want = plain(**{k: v for k, v in ref.items() if k != "labels"}).logits
        got = model.forward_logits(x, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_batch_layout_masks_image_bos_and_prompt():
    model = create_model("paligemma:tiny")
    batch = model.build_batch(QUESTIONS, ANSWERS)  # right-padded for losses
    tok = model.tokenizer
    n_img = model.num_image_tokens(32, 32)
    for i, answer in enumerate(ANSWERS):
        ids, lab, types = batch["input_ids"][i], batch["labels"][i], batch["token_type_ids"][i]
        n = int(batch["attention_mask"][i].sum())
        assert (ids[:n_img] == tok.convert_tokens_to_ids("<image>")).all() and ids[n_img] == tok.bos_token_id
        ans = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert lab[n - len(ans):n].tolist() == ans and (lab[:n - len(ans)] == -100).all() and (lab[n:] == -100).all()
        assert (types[n - len(ans):n] == 1).all() and (types[:n - len(ans)] == 0).all()
    gen = model.build_batch(QUESTIONS)
    assert "labels" not in gen and (gen["token_type_ids"] == 0).all() and (gen["attention_mask"][:, -1] == 1).all()
    with pytest.raises(ValueError, match="32x32"):
        model.build_batch(QUESTIONS, image_hw=(64, 64))


def test_answer_loss_is_the_cross_entropy_of_the_answer_tokens_only():
    model = create_model("paligemma:tiny")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = model.build_batch(QUESTIONS, ANSWERS)
    with torch.no_grad():
        loss = model.answer_loss(x, batch)
        total = model.answer_loss(x, batch, reduction="sum")
        logits = model.forward_logits(x, batch).float()
    for i in range(2):  # by hand: token t is predicted by the logits at t - 1, over the answer + <eos> only
        pos = (batch["labels"][i] != -100).nonzero().flatten()
        assert len(pos) == len(model.tokenizer(ANSWERS[i], add_special_tokens=False)["input_ids"]) + 1
        ce = F.cross_entropy(logits[i, pos - 1], batch["input_ids"][i, pos], reduction="none")
        torch.testing.assert_close(loss[i], ce.mean(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(total[i], ce.sum(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        other = model.answer_loss(x, model.build_batch(QUESTIONS, ["blue", "three"]))
        asked = model.answer_loss(x, model.build_batch(["what shape is it?", "what colour?"], ANSWERS))
    assert (other - loss).abs().min() > 1e-4  # a different answer, a different loss
    assert (asked - loss).abs().min() > 1e-6  # the answer is conditioned on the (unsupervised) question
    # a gradient reaches the pixels (attacks) and padding changes nothing
    xg = x.clone().requires_grad_(True)
    model.answer_loss(xg, batch).sum().backward()
    assert xg.grad.abs().sum() > 0
    with torch.no_grad():
        alone = torch.cat([model.answer_loss(x[i:i + 1], model.build_batch(QUESTIONS[i:i + 1], ANSWERS[i:i + 1]))
                           for i in range(2)])
    torch.testing.assert_close(alone, loss, atol=1e-5, rtol=1e-5)


def test_generation_ranking_and_pooled_features():
    model = create_model("paligemma:tiny")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = model.generate(x, QUESTIONS, max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    assert model.generate(x[1:], QUESTIONS[1:], max_new_tokens=3) == out[1:]  # left padding changes nothing
    cands = ["red", "two", "circle"]
    ranked = model.rank_answers(x, QUESTIONS, cands)
    with torch.no_grad():
        nll = torch.stack([model.answer_loss(x, model.build_batch(QUESTIONS, [c, c]), reduction="sum") for c in cands])
    assert ranked == [cands[i] for i in nll.argmin(0).tolist()]
    feats = pooled_image_features(model, x)
    assert feats.shape == (2, model.hf_model.config.text_config.hidden_size) and feats.dtype == torch.float32
    assert model.image_encoder(x).shape == (2, 16, model.hf_model.config.vision_config.hidden_size)


def test_lora_on_q_k_v_o_and_the_projector():
    model = create_model("paligemma:tiny")
    add_lvlm_lora(model, 8, lm_targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.model.named_parameters() if ".lora_A" in n}
    layers = model.hf_model.config.text_config.num_hidden_layers
    want = {f"model.language_model.layers.{i}.self_attn.{p}" for i in range(layers)
            for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert adapted == want | {"model.multi_modal_projector.linear"}
    tower = create_model("paligemma:tiny")
    add_lvlm_lora(tower, 2, lm_targets=(), vision="tower")
    names = {n for n, _ in tower.model.named_parameters() if ".lora_A" in n}
    assert any("vision_tower" in n and "layers.0.self_attn.q_proj" in n for n in names)
    assert not any("language_model" in n for n in names)


def test_digrap_vqa_trains_the_adapters_and_the_vqa_eval_runs(tmp_path):
    assert "paligemma" in METHODS.get("digrap_vqa").backends and "paligemma" in METHODS.get("grace_vqa").backends
    model = create_model("paligemma:tiny")
    data = VQAPixels(ShapesVQA(8, seed=0, image_size=model.image_size), model.preprocess)
    args = DiGraPVQAConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                           learning_rate=1e-2, optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0,
                           weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, save_strategy="no", seed=0,
                           use_cpu=True, disable_tqdm=True, report_to="none", lora_r=8, lora_alpha=16,
                           lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], weight_space="digrap")
    trainer = DiGraPVQATrainer(model, args, train_dataset=data)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all(".lora_" in n for n in before)
    assert any("o_proj.lora_A" in n for n in before) and any("k_proj.lora_B" in n for n in before)
    trainer.train()
    assert trainer.state.global_step == 2
    after = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(not torch.equal(before[n], after[n]) for n in after if ".lora_B" in n)  # B starts at 0 and moves
    assert all(np.isfinite(h["ce_loss"]) for h in trainer.state.log_history if "ce_loss" in h)
    # the merged checkpoint reloads through the backend, with the trained behaviour
    trainer.save_model(str(tmp_path / "out"))
    reloaded = create_model(f"paligemma:{tmp_path / 'out'}")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = model.build_batch(QUESTIONS, ANSWERS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.answer_loss(x, batch), model.answer_loss(x, batch), atol=1e-5, rtol=1e-5)
    ds = ShapesVQA(4, seed=1, question_types=["colour", "shape"], transform=model.preprocess)
    res = evaluate_vqa(model, ds, [8 / 255], steps=2, batch_size=4, answer_mode="rank")
    assert res["n"] == 4 and 0 <= res["robust"]["8/255"] <= res["clean"] <= 1
    gen = evaluate_vqa(model, ds, [], steps=1, batch_size=4, max_new_tokens=3)
    assert gen["n"] == 4 and 0 <= gen["clean"] <= 1


def test_the_paligemma_3b_config_runs_through_the_recipe_on_the_tiny_paligemma(tmp_path):
    """`digrap_paligemma3b_lora.yaml` (FRAMES-VQA's PaliGemma-3B setting: LoRA r8 on q / k / v / o, lr 1e-3) parses
    and runs end to end with only the model swapped for the offline fixture and the run shortened."""
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).parent.parent
    config = root / "recipes/configs/digrap_paligemma3b_lora.yaml"
    cfg = yaml.safe_load(config.read_text())
    assert cfg["model_name_or_path"] == "paligemma:google/paligemma-3b-pt-224"
    assert (cfg["lora_r"], cfg["learning_rate"]) == (8, 1e-3)
    assert cfg["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    sys.path.insert(0, str(root / "recipes"))
    import digrap_vqa

    out = tmp_path / "run"
    summary = digrap_vqa.main([
        "--config", str(config), "--model_name_or_path", "paligemma:tiny", "--output_dir", str(out), "--bf16", "false",
        "--max_steps", "2", "--train_samples", "16", "--eval_samples", "8", "--per_device_train_batch_size", "4",
        "--eval_batch_size", "8", "--logging_steps", "1", "--use_cpu", "true", "--report_to", "none",
        "--disable_tqdm", "true"])
    assert set(summary["results"]) >= {"before", "after"}
    assert summary["omega"] and all(".lora_" in n for n in summary["omega"])
    assert any(".o_proj." in n for n in summary["omega"]) and any(".k_proj." in n for n in summary["omega"])
    reloaded = create_model(f"paligemma:{out}")
    assert reloaded.backend == "paligemma" and not any("lora_" in k for k in reloaded.model.state_dict())


def test_grace_vqa_recipe_runs_on_the_tiny_paligemma(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("grace_vqa", Path(__file__).parent.parent / "recipes/grace_vqa.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    res = recipe.main(["--model_name_or_path", "paligemma:tiny", "--dataset_name", "shapes-vqa", "--output_dir",
                       str(tmp_path), "--train_samples", "16", "--eval_samples", "8", "--max_steps", "2",
                       "--per_device_train_batch_size", "4", "--attack_steps", "2", "--lora_r", "4",
                       "--eval_attack_steps", "2", "--eval_epsilons", "8/255", "--eval_batch_size", "8",
                       "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"])
    assert set(res["run"]["rows"]) == {"before", "after"} and res["run"]["method"] == "grace_vqa"
    assert create_model(f"paligemma:{tmp_path}").backend == "paligemma"


def test_a_saved_paligemma_is_its_own_hub_kind(saved):
    from vlmrobust.hub.model_card import KINDS, checkpoint_kind
    from vlmrobust.utils.hub_access import needs_hub

    assert checkpoint_kind(saved) == "paligemma"
    assert "PaliGemmaForConditionalGeneration.from_pretrained" in KINDS["paligemma"].loading
    assert KINDS["paligemma"].eval_id == "paligemma:{repo}"
    assert needs_hub("paligemma:google/paligemma-3b-pt-224") and not needs_hub("paligemma:tiny")
    assert not needs_hub(f"paligemma:{saved}")


def test_a_foreign_processor_is_refused_and_lora_r_wraps_the_language_model(saved):
    from vlmrobust.testing.tiny_paligemma import make_tiny_paligemma

    _, other = make_tiny_paligemma(image_size=64)
    with pytest.raises(ValueError, match="processor belongs to another model"):
        create_model(f"paligemma:{saved}", processor=other)
    model = create_model("paligemma:tiny", lora_r=2)
    trainable = [n for n, p in model.model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and ".lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)


def test_recipe_tiny_geometry_reaches_both_towers():
    from vlmrobust.vlm_recipe_main import LVLMScriptArguments, tiny_fixture_kwargs

    kw = tiny_fixture_kwargs(LVLMScriptArguments(model_name_or_path="paligemma:tiny", tiny_hidden=64,
                                                 tiny_image_size=48))
    assert kw == {"tiny_kwargs": {"image_size": 48, "vision_hidden": 64, "text_hidden": 64}}
    model = create_model("paligemma:tiny", **kw)
    cfg = model.hf_model.config
    assert (cfg.vision_config.hidden_size, cfg.text_config.hidden_size, model.image_size) == (64, 64, 48)
    assert model.num_image_tokens(48, 48) == 36 == model.processor.image_seq_length
