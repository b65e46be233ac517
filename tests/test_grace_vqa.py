"""GRACE on the tiny LVLMs (LLaVA, Qwen2-VL): a few two-pass steps, the pooled projected image features the Gram
volume reads, the λ = 0 reduction to a plain adversarial LoRA step, the merged checkpoint through plain
transformers, and the recipe end to end.

Planted bugs, checked once by hand on the tiny LLaVA (each makes the named test fail):
* the Gram features taken from the first image token instead of the mean over image tokens: pooled projected
  features.
* the second pass run outside `awp.perturbed()` (at θ instead of θ + Δ): a few GRACE steps (LAR loss = CE).
* merged checkpoint written without the LoRA deltas: merged checkpoint reloads with plain transformers.
(The shared step machinery, SAM reference, accumulation exactness and perturbation removal: tests/test_grace.py.)
"""

import copy

import pytest
import torch

from vlmrobust.data.shapes_vqa import ShapesVQA
from vlmrobust.models import create_model
from vlmrobust.trainers import METHODS
from vlmrobust.trainers.grace_vqa_config import GRACEVQAConfig
from vlmrobust.trainers.grace_vqa_trainer import GRACEVQATrainer, pooled_image_features

SPECS = ["llava:tiny", "qwen_vl:tiny"]


class Items(torch.utils.data.Dataset):
    def __init__(self, model, n=8):
        self.data, self.model = ShapesVQA(n, seed=0), model

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        it = self.data[i]
        return {"pixel_values": self.model.preprocess(it["image"]), "question": it["question"],
                "answers": it["answers"]}


def vqa_args(out, **kw):
    base = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, learning_rate=0.05, optim="sgd",
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, epsilon=8 / 255, attack_steps=2,
                attack_step_size=4 / 255, logging_steps=1, save_strategy="no", seed=0, use_cpu=True,
                disable_tqdm=True, report_to="none", lora_r=4, awp_max_rank=2, awp_rho=0.5, curvature_interval=1,
                merge_lora_at_end=False, max_grad_norm=0.0)
    base.update(kw)
    return GRACEVQAConfig(**base)


class Recording(GRACEVQATrainer):
    def _attack(self, model, x, batch):
        x_adv = super()._attack(model, x, batch)
        self.seen.append((x_adv.clone(), {k: v.clone() for k, v in batch.items()}))
        return x_adv


def make(spec, out, **kw):
    model = create_model(spec)
    data = Items(model)
    trainer = Recording(model, vqa_args(out, **kw), train_dataset=data)
    torch.manual_seed(1)
    with torch.no_grad():  # a random B: every LoRA gradient non-zero from step 0
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    trainer.seen = []
    return model, trainer


def lora_params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("spec", SPECS)
def test_pooled_projected_features_are_the_image_tokens_the_language_model_reads(spec):
    model = create_model(spec)
    x = torch.rand(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    batch = model.build_batch(["what shape?", "what colour?"], ["circle", "red"], image_hw=tuple(x.shape[-2:]))
    lm, seen = model.hf_model.model.language_model, {}
    handle = lm.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    with torch.no_grad():
        model.answer_loss(x, batch)
        feats = pooled_image_features(model, x)
    handle.remove()
    image_id = model.hf_model.config.image_token_id
    emb = seen["inputs_embeds"]
    want = torch.stack([emb[i][batch["input_ids"][i] == image_id].float().mean(0) for i in range(2)])
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_a_few_grace_steps(spec, tmp_path):
    model, trainer = make(spec, tmp_path)
    before = lora_params(trainer.model)
    assert any("multi_modal_projector" in n or "merger" in n for n in trainer.awp.layers)
    assert any("language_model" in n for n in trainer.awp.layers)
    trainer.train()
    after = lora_params(trainer.model)
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-3
    n = len(trainer.awp.layers)
    k = int(0.2 * n + 0.5)
    ranks = list(trainer.awp.ranks.values())
    assert ranks.count(2) == k and ranks.count(0) == k
    for log in trainer.state.log_history[:2]:
        assert log["gram_volume"] > 0 and log["awp_norm"] == pytest.approx(0.5, rel=1e-4)
        assert abs(log["lar_loss"] - log["adv_loss"]) > 1e-4  # the second pass ran at θ + Δ
    assert trainer.awp.mode == "off" and not trainer.awp.factors


@pytest.mark.parametrize("spec", SPECS[:1])
def test_zero_lambdas_reduce_to_a_plain_adversarial_lora_step(spec, tmp_path):
    model, trainer = make(spec, tmp_path, lambda_lar=0.0, lambda_gv=0.0, lora_vision="none")
    start = copy.deepcopy(trainer.model)
    trainer.train()
    lora = {n: p for n, p in start.named_parameters() if "lora_" in n}
    for x_adv, batch in trainer.seen:  # SGD on the answer CE of the recorded adversarial images, nothing else
        grads = torch.autograd.grad(start(x_adv, batch).mean(), list(lora.values()))
        with torch.no_grad():
            for p, g in zip(lora.values(), grads):
                p -= 0.05 * g
    got = lora_params(trainer.model)
    for k, v in lora_params(start).items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_merged_checkpoint_reloads_with_plain_transformers(spec, tmp_path):
    model, trainer = make(spec, tmp_path / "out", max_steps=1)
    trainer.train()
    x = torch.rand(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    batch = model.build_batch(["what shape?", "what colour?"], ["circle", "red"], image_hw=tuple(x.shape[-2:]))
    with torch.no_grad():
        want = model.answer_loss(x, batch)
        trainer.save_model(str(tmp_path / "lora"))  # adapters separate: merged weights written
        trainer.merge_and_unload()
        assert not any("lora_" in k or "base_layer" in k for k in model.model.state_dict())
        torch.testing.assert_close(model.answer_loss(x, batch), want, rtol=1e-5, atol=1e-5)
        trainer.save_model(str(tmp_path / "merged"))
    cls = type(model.hf_model)
    for folder in ("lora", "merged"):
        plain = cls.from_pretrained(tmp_path / folder).eval()
        reloaded = create_model(f"{spec.split(':')[0]}:{tmp_path / folder}")
        assert type(reloaded.model) is cls
        reloaded.model = plain
        with torch.no_grad():
            torch.testing.assert_close(reloaded.answer_loss(x, batch), want, rtol=1e-5, atol=1e-5)


def test_registered_and_config_checks(tmp_path):
    m = METHODS.get("grace_vqa")
    assert m.backends == ("llava", "qwen_vl") and m.recipe == "recipes/grace_vqa.py"
    with pytest.raises(ValueError, match="lora_vision='none'"):
        vqa_args(tmp_path, lora_vision="none")
    with pytest.raises(ValueError, match="not a 'open_clip' model|not a 'hf-clip' model|not a"):
        GRACEVQATrainer(create_model("vlmrobust:tiny-digits-clip"), vqa_args(tmp_path))


def test_recipe_end_to_end_on_tiny_llava(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("grace_vqa", Path(__file__).parent.parent / "recipes/grace_vqa.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    res = recipe.main(["--model_name_or_path", "llava:tiny", "--dataset_name", "shapes-vqa", "--output_dir",
                       str(tmp_path), "--train_samples", "16", "--eval_samples", "8", "--max_steps", "2",
                       "--per_device_train_batch_size", "4", "--attack_steps", "2", "--lora_r", "4",
                       "--eval_attack_steps", "2", "--eval_epsilons", "8/255", "--eval_batch_size", "8",
                       "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"])
    assert set(res["run"]["rows"]) == {"before", "after"} and res["run"]["method"] == "grace_vqa"
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "adapter_config.json").exists()
