"""`recipes/digrap_vqa.py` on the tiny LLaVA: LoRA adapters only are trained, DiGraP's ω stays in [0, 1], the
adapters are saved in PEFT's layout, ID / near / far and WiSE-FT rows are reported; WiSE-FT of a LoRA delta at α
scales it (α = 0: the base model) and restores it."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "recipes"))


def test_digrap_vqa_recipe_on_the_tiny_llava(tmp_path):
    import digrap_vqa

    out = tmp_path / "run"
    summary = digrap_vqa.main([
        "--config", str(ROOT / "recipes/configs/quickstart_digrap_vqa.yaml"), "--output_dir", str(out),
        "--sft_steps", "20", "--sft_samples", "64", "--train_samples", "32", "--eval_samples", "12",
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--wise_alphas", "0", "0.5", "--use_cpu", "true"])
    assert set(summary["results"]) == {"before", "after", "wise-ft α=0", "wise-ft α=0.5"}
    for row in summary["results"].values():
        assert set(row) == {"id", "near", "far"} and all(0 <= v <= 1 for v in row.values())
    # WiSE-FT at α = 0 is the model before LoRA fine-tuning
    assert summary["results"]["wise-ft α=0"] == summary["results"]["before"]
    omega = summary["omega"]
    assert omega and all(0 <= w <= 1 for w in omega.values()) and all(".lora_" in n for n in omega)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "results.json").read_text())["weight_space"] == "digrap"


def test_lora_scale_interpolates_the_delta_and_restores_it():
    from vlmrobust.models import create_model
    from vlmrobust.models.lvlm_base import apply_lora, lora_config
    from vlmrobust.vlm_finetune_main import lora_scale

    model = create_model("llava:tiny")
    model.model = apply_lora(model.model, lora_config(lora_r=2))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)  # a non-zero delta
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and isinstance(getattr(m, "scaling", None), dict))
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        base, full = layer.base_layer(x), layer(x)
        with lora_scale(model, 0.25):
            quarter = layer(x)
        torch.testing.assert_close(quarter, base + 0.25 * (full - base), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(x), full)


def test_lp_ft_probes_the_output_head_then_fine_tunes_adapters_and_head(tmp_path, monkeypatch):
    """LP-FT: the first stage trains the output head alone; the second the LoRA adapters and the probed head, with
    the probed head as the weight-space θ₀ (L2-SP here); the head is saved beside the adapters."""
    import vlmrobust.vlm_recipe_main as vrm
    from vlmrobust.models import create_model
    from vlmrobust.vlm_finetune_main import DiGraPVQAConfig, VQAFinetuneScriptArguments, lora_finetune, shapes_splits

    calls, original = [], vrm.finetune_vqa

    def spy(model, dataset, **kw):
        head = model.model.get_output_embeddings().weight
        calls.append({"trainable": {n for n, p in model.named_parameters() if p.requires_grad},
                      "head": head.detach().clone(), "others": {n: p.detach().clone() for n, p in
                                                                model.named_parameters() if ".lora_" in n},
                      "ref": kw.get("weight_space") and kw["weight_space"].reference})
        return original(model, dataset, **kw)

    monkeypatch.setattr(vrm, "finetune_vqa", spy)
    model = create_model("llava:tiny")
    script = VQAFinetuneScriptArguments(train_samples=16, eval_samples=4, sft_samples=16, eval_batch_size=4)
    data = shapes_splits(script, model, 0)
    args = DiGraPVQAConfig(output_dir=str(tmp_path), weight_space="l2sp", l2sp_lambda=0.1, lp_steps=3,
                           lp_learning_rate=0.05, max_steps=2, per_device_train_batch_size=8, learning_rate=1e-2,
                           use_cpu=True, report_to="none", logging_steps=100)
    summary = lora_finetune(model, data, script, args)
    head_name = next(n for n in calls[1]["trainable"] if ".lora_" not in n)
    assert len(calls) == 2 and calls[0]["trainable"] == {head_name} and head_name.endswith("lm_head.weight")
    assert calls[1]["trainable"] - {head_name} and all(".lora_" in n for n in calls[1]["trainable"] - {head_name})
    assert not torch.equal(calls[1]["head"], calls[0]["head"])  # the probe moved the head...
    assert all(torch.equal(v, calls[1]["others"][n]) for n, v in calls[0]["others"].items())  # ...not the adapters
    ref = calls[1]["ref"]
    assert torch.equal(ref[head_name], calls[1]["head"])  # θ₀ of the head: the probe
    head = model.model.get_output_embeddings().weight
    assert not torch.equal(head, calls[1]["head"])  # fine-tuned in the second stage
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(tmp_path / "lp_ft_head.safetensors")["weight"], head.detach())
    assert {"before", "probed", "after"} == set(summary["results"]) and summary["lp_steps"] == 3
