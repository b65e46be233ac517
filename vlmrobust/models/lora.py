"""LoRA (PEFT) for every trainer: adapters on a CLIP's vision tower or an LVLM, merging them back into the backend's
native layout, and WiSE-FT of a LoRA delta.

Two ways to add adapters to a CLIP tower: `add_vision_lora` wraps `model.image_encoder.tower` in PEFT's `LoraModel`
(GRACE, whose weight perturbation reads its layers), `inject_lora` injects them into any module in place with a seeded
initialisation (DiGraP on CLIP); `add_lvlm_lora` adapts an LVLM's language model (and optionally its image side).
`merge_lora_state_dict` turns a state dict holding PEFT's keys into the plain keys of the backend with the merged
weights `W + ΔW`, ΔW from PEFT's own `get_delta_weight` (what its `merge_and_unload` adds) or `scaling·B·A` from the
state dict alone; plain open_clip / `CLIPModel.from_pretrained` / transformers load the result. `lora_scale`
evaluates `W₀ + α·ΔW` (WiSE-FT of the adapters) without touching the weights.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

#: default LoRA targets per backend: the linear layers of the vision transformer blocks. open_clip's attention is
#: `nn.MultiheadAttention`, whose forward reads `in_proj_weight` / `out_proj.weight` directly (a LoRA on `out_proj`
#: would be silently ignored), so there its MLP (`c_fc`, `c_proj`: 2/3 of a block's weights) and, in place of the
#: attention, the patch embedding (`conv1`) are adapted.
VISION_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "open_clip": ("conv1", "c_fc", "c_proj"),
    "hf-clip": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}
ADAPTER = "default"


def vision_lora_targets(model) -> list[str]:
    """The default LoRA target module names of `model`'s vision tower (see `VISION_LORA_TARGETS`)."""
    backend = getattr(model, "backend", None)
    if backend not in VISION_LORA_TARGETS:
        raise ValueError(f"No default LoRA targets for a {backend!r} vision tower (known: "
                         f"{', '.join(VISION_LORA_TARGETS)}); pass target_modules explicitly.")
    return list(VISION_LORA_TARGETS[backend])


def add_vision_lora(model, r: int, alpha: float | None = None, dropout: float = 0.0,
                    target_modules: Sequence[str] | None = None):
    """Add LoRA adapters to the linear layers of `model.image_encoder.tower`, in place.

    Only the adapters stay trainable (PEFT marks everything else of the tower frozen).

    Args:
        model (`VisionLanguageModel`): an open_clip or transformers CLIP (`create_model`).
        r (`int`): LoRA rank.
        alpha (`float`, *optional*): LoRA α (scaling α / r); defaults to `2·r`.
        dropout (`float`, *optional*, defaults to 0.0): dropout on the adapter's input.
        target_modules (`Sequence[str]`, *optional*): module names (suffixes) to adapt; defaults to
            `vision_lora_targets(model)`.

    Returns:
        `peft.tuners.lora.LoraModel`: the tuner around the tower; its `merge_and_unload()` merges in place.
    """
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}.")
    targets = list(target_modules) if target_modules else vision_lora_targets(model)
    cfg = LoraConfig(r=int(r), lora_alpha=float(alpha if alpha is not None else 2 * r), lora_dropout=float(dropout),
                     target_modules=targets, bias="none")
    return LoraModel(model.image_encoder.tower, cfg, ADAPTER)


def lora_layers(module: nn.Module, base_types: tuple[type, ...] | None = None) -> dict[str, nn.Module]:
    """The PEFT LoRA layers inside `module`, by name, in module order (only those whose base layer is one of
    `base_types` when given, e.g. `(nn.Linear,)`)."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)
            and (base_types is None or isinstance(m.get_base_layer(), base_types))}


@torch.no_grad()
def lora_deltas(module: nn.Module) -> dict[str, torch.Tensor]:
    """`{layer name: ΔW}` of the LoRA layers inside `module`: PEFT's own `get_delta_weight` (what its
    `merge_and_unload` adds to the base weight; linear and convolution layers alike), detached, on the CPU."""
    out = {}
    for name, layer in lora_layers(module).items():
        if layer.use_dora.get(ADAPTER, False):
            raise ValueError(f"{name}: DoRA layers are not supported here.")
        out[name] = layer.get_delta_weight(ADAPTER).detach().cpu()
    return out


_LORA_A_KEY = re.compile(r"^(?P<prefix>.*)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def lora_deltas_from_state_dict(state_dict: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """`{layer name: scaling·B·A}` (float32) of every LoRA layer in a state dict with PEFT's keys (linear layers)."""
    out = {}
    for key, a in state_dict.items():
        m = _LORA_A_KEY.match(key)
        if m is not None:
            b = state_dict[f"{m['prefix']}.lora_B.{m['adapter']}.weight"]
            out[m["prefix"]] = scaling * (b.float() @ a.float())
    return out


def merge_lora_state_dict(state_dict: Mapping[str, torch.Tensor], deltas: Mapping[str, torch.Tensor] | float) -> dict:
    """Plain keys and merged weights from a state dict with PEFT's LoRA keys.

    For each LoRA layer `p` (a key of `deltas`, in the state dict's naming): `p.weight = p.base_layer.weight + ΔW`
    (added in float32, stored in the base weight's dtype), `p.base_layer.bias` becomes `p.bias`, the adapters are
    dropped; every other key is kept.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): tensors keyed as in the adapted model.
        deltas (`Mapping[str, torch.Tensor]` or `float`): LoRA layer name -> ΔW (`lora_deltas`), named as in
            `state_dict`; or the scaling α / r, and ΔW = scaling·B·A of each layer's adapters in `state_dict`
            (`lora_deltas_from_state_dict`: linear layers, one adapter each).

    Returns:
        `dict[str, torch.Tensor]`: the state dict of the un-adapted model.
    """
    if isinstance(deltas, (int, float)):
        deltas = lora_deltas_from_state_dict(state_dict, float(deltas))
    out = dict(state_dict)
    for p, delta in deltas.items():
        if f"{p}.base_layer.weight" not in out:
            raise KeyError(f"LoRA layer {p!r}: {p}.base_layer.weight is not in the state dict.")
        w = out.pop(f"{p}.base_layer.weight")
        out[f"{p}.weight"] = (w.float() + delta.to(w.device).float()).to(w.dtype)
        if f"{p}.base_layer.bias" in out:
            out[f"{p}.bias"] = out.pop(f"{p}.base_layer.bias")
        for k in [k for k in out if k.startswith(f"{p}.lora_")]:
            del out[k]
    left = [k for k in out if ".lora_" in k or ".base_layer." in k]
    if left:
        raise ValueError(f"LoRA keys without a delta in merge_lora_state_dict: {left[:3]}.")
    return out


#: module-name patterns of an LVLM's image side, for `add_lvlm_lora(vision=...)`: the projector into the language
#: model (LLaVA's and PaliGemma's `multi_modal_projector`, Qwen-VL's `visual.merger`), and the tower's transformer
#: blocks
LVLM_PROJECTOR_PATTERN = r"(multi_modal_projector\.linear(_\d+)?|visual\.merger\.mlp\.[02])"
LVLM_TOWER_PATTERN = (r"(vision_tower\..*\.layers\.\d+\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
                      r"|visual\.blocks\.\d+\..*\.(qkv|proj|fc1|fc2|gate_proj|up_proj|down_proj))")


def lvlm_lora_pattern(lm_targets: Sequence[str], vision: str = "projector") -> str:
    """The PEFT `target_modules` regex of `add_lvlm_lora`: `lm_targets` inside the language model, plus the
    projector (`vision="projector"`) or the projector and the vision tower's blocks (`"tower"`)."""
    if vision not in ("none", "projector", "tower"):
        raise ValueError(f"vision must be 'none', 'projector' or 'tower', got {vision!r}.")
    parts = [rf".*language_model\..*\.({'|'.join(lm_targets)})"] if lm_targets else []
    if vision in ("projector", "tower"):
        parts.append(rf".*{LVLM_PROJECTOR_PATTERN}")
    if vision == "tower":
        parts.append(rf".*{LVLM_TOWER_PATTERN}")
    if not parts:
        raise ValueError("add_lvlm_lora: nothing to adapt (no language-model targets and vision='none').")
    return "^(" + "|".join(parts) + ")$"


def add_lvlm_lora(model, r: int, alpha: float | None = None, dropout: float = 0.0,
                  lm_targets: Sequence[str] = ("q_proj", "v_proj"), vision: str = "projector"):
    """Add LoRA adapters to an LVLM's transformers model (`model.model`, a vlmrobust `llava` / `qwen_vl`), in place.

    Args:
        model (`LVLM`): the vlmrobust LLaVA / Qwen-VL (not already wrapped by PEFT).
        r, alpha, dropout: as in `add_vision_lora`.
        lm_targets (`Sequence[str]`, *optional*, defaults to `("q_proj", "v_proj")`): linear layers of the language
            model to adapt.
        vision (`str`, *optional*, defaults to `"projector"`): the image side adapted too: `"none"`, `"projector"`
            (the projector into the language model) or `"tower"` (the projector and the vision tower's blocks).

    Returns:
        `peft.tuners.lora.LoraModel`: the tuner around the transformers model; its `merge_and_unload()` merges in
        place.
    """
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}.")
    if hasattr(model.model, "peft_config"):
        raise ValueError("The LVLM already carries PEFT adapters: load it without lora_r.")
    cfg = LoraConfig(r=int(r), lora_alpha=float(alpha if alpha is not None else 2 * r), lora_dropout=float(dropout),
                     target_modules=lvlm_lora_pattern(lm_targets, vision), bias="none")
    return LoraModel(model.model, cfg, ADAPTER)


#: Linear layers `inject_lora` targets by default, per tower family (the first family with a match is used): HF
#: CLIP's attention projections; open_clip's MLP (open_clip's `nn.MultiheadAttention` reads `out_proj.weight`
#: directly, so a LoRA wrapper of it would never run)
DEFAULT_TARGETS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj", "out_proj"), ("c_fc", "c_proj"))


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


@contextlib.contextmanager
def lora_scale(model: nn.Module, alpha: float):
    """WiSE-FT of a LoRA model (arXiv 2109.01903): every PEFT LoRA layer's delta inside `model` scaled by `alpha`
    (`W₀ + α·s·B·A`, the interpolation of the merged weights with the base), restored on exit."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha must be in [0, 1], got {alpha}.")
    layers = [m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict) and hasattr(m, "lora_A")]
    saved = [dict(m.scaling) for m in layers]
    try:
        for m in layers:
            for k in m.scaling:
                m.scaling[k] = m.scaling[k] * alpha
        yield model
    finally:
        for m, s in zip(layers, saved):
            m.scaling.clear()
            m.scaling.update(s)
