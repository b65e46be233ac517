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
