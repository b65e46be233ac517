"""`--activation_checkpointing` for the module a vlmrobust trainer trains (HF towers and open_clip towers alike)."""

from __future__ import annotations

from torch import nn


def attach_activation_checkpointing(module: nn.Module) -> nn.Module:
    """Give the trained module the `activation_checkpointing_enable` the Trainer calls for `--activation_checkpointing`
    (alias `--gradient_checkpointing`).

    It switches checkpointing on in every outermost `transformers` model inside (an LVLM's vision tower) and in
    every open_clip tower (`set_grad_checkpointing`). Checkpointing is only active in training mode: the attack runs
    in eval mode and keeps its activations, the training forward / backward recomputes them.
    """
    if hasattr(module, "activation_checkpointing_enable"):
        return module
    from transformers import PreTrainedModel

    hf = [m for m in module.modules() if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing]
    hf = [m for m in hf if not any(o is not m and any(c is m for c in o.modules()) for o in hf)]
    oc = [m for m in module.modules() if not isinstance(m, PreTrainedModel) and hasattr(m, "set_grad_checkpointing")
          and not any(any(c is m for c in h.modules()) for h in hf)]
    if not hf and not oc:
        raise ValueError(f"--activation_checkpointing: no transformers model or open_clip tower inside "
                         f"{type(module).__name__} supports it; train without it.")

    def enable(activation_checkpointing_kwargs=None, every_n_layers: int = 1, offload: bool = False):
        for m in hf:
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                              every_n_layers=every_n_layers, offload=offload)
        for m in oc:
            m.set_grad_checkpointing(True)

    module.activation_checkpointing_enable = enable
    return module
