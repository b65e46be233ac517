"""LoRA on a CLIP image tower (PEFT's layers injected in place) and the merged weights for native checkpoints (DiGraP
/ LP-FT; GRACE's adapters, with its weight-perturbation branch and the LVLM variant, are in `models/lora.py`)."""

from __future__ import annotations

import re

import torch
from torch import nn

#: Linear layers LoRA targets by default, per tower family (the first family with a match is used): HF CLIP's
#: attention projections; open_clip's MLP (open_clip's `nn.MultiheadAttention` reads `out_proj.weight` directly, so
#: a LoRA wrapper of it would never run)
DEFAULT_TARGETS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj", "out_proj"), ("c_fc", "c_proj"))

_LORA_KEY = re.compile(r"^(?P<prefix>.*)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def default_lora_targets(module: nn.Module) -> list[str]:
    """The `DEFAULT_TARGETS` family present in `module` (names of its `nn.Linear` layers, last component)."""
    linear = {n.rsplit(".", 1)[-1] for n, m in module.named_modules() if type(m) is nn.Linear}
    for family in DEFAULT_TARGETS:
        found = [t for t in family if t in linear]
        if found:
            return found
    raise ValueError(f"No default LoRA target in this module (nn.Linear layers: {sorted(linear)[:8]}); pass "
                     "lora_target_modules.")


def inject_lora(module: nn.Module, r: int, alpha: float | None = None, dropout: float = 0.0,
                target_modules: list[str] | None = None, seed: int = 0) -> nn.Module:
    """Add PEFT LoRA adapters to `module` in place (`peft.inject_adapter_in_model`); only the adapters train.

    Args:
        module (`nn.Module`): e.g. a CLIP image tower.
        r (`int`): rank (> 0).
        alpha (`float`, *optional*): LoRA α (scaling α / r); defaults to 2r.
        dropout (`float`, *optional*, defaults to 0.0): dropout on the adapters' input.
        target_modules (`list[str]`, *optional*): names of the `nn.Linear` layers to adapt; defaults to
            `default_lora_targets(module)`.
        seed (`int`, *optional*, defaults to 0): seed of the adapters' random initialisation (drawn under
            `torch.random.fork_rng`, so the global RNG is untouched): the same run builds the same adapters again,
            which a resume checks.

    Returns:
        `nn.Module`: `module`, with `...<target>.lora_A.default.weight` / `lora_B` parameters (B = 0: the function is
        unchanged) and every other parameter frozen.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if r <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {r}.")
    targets = list(target_modules) if target_modules else default_lora_targets(module)
    config = LoraConfig(r=int(r), lora_alpha=float(alpha if alpha is not None else 2 * r), lora_dropout=dropout,
                        target_modules=targets)
    module.requires_grad_(False)
    devices = [p.device for p in module.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return inject_adapter_in_model(config, module)


def merge_lora_state_dict(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold LoRA adapters into their base weights: `W = W₀ + scaling · B·A` under the layer's original key.

    `<p>.base_layer.weight` / `.bias` become `<p>.weight` / `.bias`; `<p>.lora_*` keys are dropped; other keys pass
    through. So a LoRA-trained tower saves in the backend's native layout (plain open_clip / transformers load it).

    Args:
        state_dict (`dict[str, torch.Tensor]`): a state dict with PEFT's LoRA keys (one adapter per layer).
        scaling (`float`): α / r.
    """
    out = {k: v for k, v in state_dict.items() if ".lora_" not in k and ".base_layer." not in k}
    for key, a in state_dict.items():
        m = _LORA_KEY.match(key)
        if m is None:
            continue
        p, adapter = m["prefix"], m["adapter"]
        b = state_dict[f"{p}.lora_B.{adapter}.weight"]
        base = state_dict[f"{p}.base_layer.weight"]
        out[f"{p}.weight"] = (base.float() + scaling * (b.float() @ a.float())).to(base.dtype)
        if f"{p}.base_layer.bias" in state_dict:
            out[f"{p}.bias"] = state_dict[f"{p}.base_layer.bias"]
    return out
