"""Whole-tensor access to a parameter and its gradient, with and without DeepSpeed ZeRO.

Without DeepSpeed a parameter and its `.grad` are whole. Under ZeRO-1 / 2 the gradient (and the fp32 master copy of
the weights the optimizer updates) are partitioned over the ranks; under ZeRO-3 the parameter is partitioned too.
These helpers gather what is partitioned (every rank gets the whole tensor) and write a whole tensor back to every
place that holds a piece of it, using DeepSpeed's public `deepspeed.utils.safe_*` API and
`deepspeed.zero.GatheredParameters`. They must be called on every rank (they are collective under ZeRO).
"""

from __future__ import annotations

import torch
from torch import nn


def _zero3(param: nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


def _zero12(param: nn.Parameter) -> bool:
    # ZeRO-1 / 2 and DeepSpeed's bf16 optimizer link each parameter to its fp32 fragment. The attribute exists on
    # every rank, but is None where the rank holds no fragment of the tensor: test for the attribute (as DeepSpeed's
    # safe_* functions do), or the ranks would disagree on whether to join the collective.
    return hasattr(param, "_hp_mapping")


def get_full_grad(param: nn.Parameter) -> torch.Tensor | None:
    """The whole gradient of `param` (all-reduced / accumulated as the optimizer will see it), or None."""
    if _zero3(param) or _zero12(param) or hasattr(param, "_hp_grad"):
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(param)
    return param.grad


def set_full_grad(param: nn.Parameter, grad: torch.Tensor) -> None:
    """Make `grad` (whole, identical on every rank) the gradient the optimizer uses for `param`."""
    if _zero3(param) or _zero12(param) or hasattr(param, "_hp_grad"):
        from deepspeed.utils import safe_set_full_grad

        safe_set_full_grad(param, grad)
    elif param.grad is not None and param.grad.shape == grad.shape:
        param.grad.copy_(grad)  # in place: DDP's bucket views of .grad stay valid
    else:
        param.grad = grad


def get_full_param(param: nn.Parameter) -> torch.Tensor:
    """The whole current value of `param` in fp32: DeepSpeed's fp32 master copy under ZeRO, else the parameter.

    Read-only (without DeepSpeed it may share storage with the parameter).
    """
    if _zero3(param) or _zero12(param):
        from deepspeed.utils import safe_get_full_fp32_param

        full = safe_get_full_fp32_param(param)
        if full is not None:
            return full
    return param.detach().float()


def set_full_param(param: nn.Parameter, value: torch.Tensor) -> None:
    """Write the whole `value` (identical on every rank) into `param` everywhere a piece of it lives.

    ZeRO-3: the rank's fp32 master partition (`safe_set_full_fp32_param`) and the low-precision partition the next
    forward gathers (`GatheredParameters(..., modifier_rank=0)`: gather, modify, re-partition). ZeRO-1 / 2: the fp32
    master fragment and the (whole) model parameter. Otherwise: the parameter. Writing only the model parameter under
    ZeRO would be undone by the next step, which copies the master weights back.
    """
    with torch.no_grad():
        if _zero3(param):
            import deepspeed
            from deepspeed.utils import safe_set_full_fp32_param

            safe_set_full_fp32_param(param, value)
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(value.reshape(param.shape).to(param.data))
            return
        if _zero12(param):
            from deepspeed.utils import safe_set_full_fp32_param

            safe_set_full_fp32_param(param, value)
        param.data.copy_(value.reshape(param.shape).to(param.data))
