"""θ₀: the frozen snapshot of the trained module that every weight-space consumer shares.

FARE's frozen target encoder, gradient transforms that pull towards the pretrained weights (L2-SP, DiGraP),
post-step constraints that project back towards them (FTP, SPD) and WiSE-FT's interpolation all need the weights the
run started from. The trainer takes one snapshot (only when something needs it) and hands the same object to each
consumer; a consumer never copies it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from ..utils.distributed import outside_zero3_init


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with every parameter frozen, in eval mode (for reference / teacher models)."""
    ref = copy.deepcopy(module)
    ref.requires_grad_(False)
    return ref.eval()


class ReferenceWeights:
    """A frozen copy θ₀ of the trained module, keyed by that module's parameter names.

    Built before the `Trainer` / DeepSpeed sees the model (ZeRO-3 never partitions it; it is built outside the HF
    DeepSpeed config, like the models in the recipes), so it stays whole on every rank. It lives on the CPU until
    first used, then on the training device. It is both a module (FARE runs it on the clean images) and a table of
    tensors (`ref[name]`, for gradient transforms and constraints): the tensors *are* the module's parameters, so two
    consumers never hold two copies.

    Args:
        module (`nn.Module`): the trainable module as the trainer hands it to the `Trainer`, whole (not partitioned).

    Raises:
        ValueError: when `module` is already partitioned by DeepSpeed ZeRO-3 (build the model under
            `vlmrobust.utils.distributed.outside_zero3_init`).
    """

    def __init__(self, module: nn.Module):
        partitioned = [n for n, p in module.named_parameters() if hasattr(p, "ds_id")]
        if partitioned:
            raise ValueError(f"Cannot snapshot θ₀: {len(partitioned)} parameters (e.g. {partitioned[0]!r}) are already "
                             "partitioned by DeepSpeed ZeRO-3. Build the model under `outside_zero3_init()` so that it "
                             "is whole when the trainer is created.")
        with outside_zero3_init():
            self.module = frozen_copy(module)
        self._tensors: dict[str, torch.Tensor] = dict(self.module.named_parameters())

    # -- the table view ----------------------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def get(self, name: str, device: torch.device | str | None = None) -> torch.Tensor | None:
        """θ₀ of parameter `name` (None when the module has no such parameter), on `device` when given.

        Moving one tensor moves the whole snapshot (once): it stays a single copy on the training device.
        """
        t = self._tensors.get(name)
        if t is not None and device is not None and t.device != torch.device(device):
            self.to(device)
            t = self._tensors[name]
        return t

    def to(self, device: torch.device | str) -> ReferenceWeights:
        """Move the snapshot to `device` (in place; a no-op when it is already there)."""
        first = next(iter(self._tensors.values()), None)
        if first is not None and first.device == torch.device(device):
            return self
        self.module.to(device)
        self._tensors = dict(self.module.named_parameters())
        return self

    # -- the module view ---------------------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        """Run the frozen module (on the device of the first tensor argument)."""
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is not None:
            self.to(first.device)
        return self.module(*args, **kwargs)

    # -- identity across a resume ------------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, list[float]]:
        """Per tensor `[sum, sum of squares]` in float64: recorded in each checkpoint to recognise θ₀ on resume."""
        out = {}
        for name, t in self._tensors.items():
            d = t.detach().double()
            out[name] = [float(d.sum()), float((d * d).sum())]
        return out

    def check_fingerprint(self, saved: Mapping[str, list[float]], where: str = "the checkpoint") -> None:
        """Refuse to resume against another θ₀ (e.g. a trainer built from the checkpoint instead of the original
        model, which would make the checkpoint's weights the reference)."""
        mine = self.fingerprint()
        if set(saved) != set(mine):
            raise ValueError(f"θ₀ in {where} has other parameter names than this run's trained module "
                             f"({sorted(set(saved) ^ set(mine))[:3]}...).")
        bad = [n for n, v in saved.items()
               if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(v, mine[n]))]
        if bad:
            raise ValueError(f"θ₀ differs from the one {where} was trained against ({len(bad)} tensors, e.g. "
                             f"{bad[0]!r}). Build the trainer from the original model (the run's "
                             "`model_name_or_path`), not from a checkpoint, and resume with `resume_from_checkpoint`.")

    # -- WiSE-FT ----------------------------------------------------------------------------------------------------
    def interpolate(self, state_dict: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """WiSE-FT (arXiv 2109.01903): `α·θ_ft + (1 − α)·θ₀` for every tensor of `state_dict` θ₀ has.

        Args:
            state_dict (`Mapping[str, torch.Tensor]`): fine-tuned tensors, keyed by the trained module's names.
            alpha (`float`): weight of the fine-tuned model, any float in [0, 1] (never truncated).

        Returns:
            `dict[str, torch.Tensor]`: the interpolated tensors (others, e.g. buffers, unchanged), in the dtype and on
            the device of `state_dict`'s.
        """
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"WiSE-FT alpha must be in [0, 1], got {alpha}.")
        out = {}
        for name, t in state_dict.items():
            ref = self._tensors.get(name)
            if ref is None:
                out[name] = t
                continue
            mixed = alpha * t.detach().float() + (1.0 - alpha) * ref.detach().to(t.device).float()
            out[name] = mixed.to(t.dtype)
        return out
