"""The `Attack` base class, the budget check, the result type and the `ATTACKS` registry.

Every attack works in [0, 1] pixel space on a model that normalises internally, keeps its perturbation in fp32,
takes gradients with respect to the perturbation only, leaves the global RNG and the model's train/eval mode as it
found them, and returns points inside the ε-ball intersected with the [0, 1] box.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vlmrobust.registry import Registry

from .losses import ce_loss

LossFn = Callable[[Any, Tensor], Tensor]

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")

_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def canonical_norm(norm: str) -> str:
    """Return the canonical spelling ("Linf", "L2", "L1") of a case-insensitive norm name."""
    key = str(norm).lower()
    if key not in _NORMS:
        raise ValueError(f"Unknown norm {norm!r}; valid norms are 'Linf', 'L2' and 'L1' (case-insensitive).")
    return _NORMS[key]


def check_budget(norm: str, eps: float) -> None:
    """Fail early on a threat model that is almost certainly a unit mistake.

    Args:
        norm (`str`):
            "Linf", "L2" or "L1" (case-insensitive).
        eps (`float`):
            Radius of the ball in [0, 1] pixel units; an L∞ radius above 1 covers the whole pixel range, which nearly
            always means the budget was given in 0–255 units.

    Raises:
        ValueError: on an unknown norm, a negative or non-finite `eps`, or an L∞ `eps` larger than 1.
    """
    canon = canonical_norm(norm)
    try:
        eps_f = float(eps)
    except (TypeError, ValueError) as err:
        raise ValueError(f"eps must be a number, got {eps!r}.") from err
    if not math.isfinite(eps_f) or eps_f < 0:
        raise ValueError(f"eps must be a finite number >= 0, got eps={eps!r}.")
    if canon == "Linf" and eps_f > 1:
        raise ValueError(
            f"eps={eps:g} for an Linf budget is larger than the whole [0,1] pixel range: "
            f"did you mean eps={eps:g}/255 (={eps_f / 255:.4f})?"
        )


@dataclass
class AttackResult:
    """What an attack found, per sample.

    Args:
        x_adv (`torch.Tensor`):
            The adversarial images, same shape, dtype and device as the input. For APGD the first misclassified
            point where one was found, else the max-loss point; for PGD the last iterate (or the max-loss point).
        x_max_loss (`torch.Tensor`):
            The point of maximal loss found for each sample.
        loss (`torch.Tensor`):
            Per-sample loss (shape `[B]`, fp32) at `x_max_loss`.
        success (`torch.Tensor`, *optional*):
            Boolean `[B]`: the model misclassifies `x_adv`. `None` when the target is not a vector of class labels or
            the model output is not `[B, n_classes]` logits (e.g. embedding targets).
    """

    x_adv: Tensor
    x_max_loss: Tensor
    loss: Tensor
    success: Tensor | None = None


def is_labels(target: Any, batch_size: int) -> bool:
    """True when `target` is a `[B]` vector of integer class labels."""
    return (
        isinstance(target, Tensor)
        and target.dim() == 1
        and target.shape[0] == batch_size
        and not target.is_floating_point()
        and not target.is_complex()
        and target.dtype != torch.bool
    )


def is_logits(output: Any, batch_size: int) -> bool:
    """True when `output` looks like `[B, n_classes]` classifier logits."""
    return isinstance(output, Tensor) and output.dim() == 2 and output.shape[0] == batch_size


def per_sample_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample Linf / L2 / L1 norm of a batch (batch on dim 0), as `[B]`."""
    flat = delta.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    return flat.abs().sum(dim=1)


def _infer_input_dtype(model: Any, images: Tensor) -> torch.dtype:
    if isinstance(model, nn.Module):
        # lazily: the first floating tensor decides, without listing every parameter and buffer of the model
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return images.dtype if images.is_floating_point() else torch.float32


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put an `nn.Module` (every submodule) in eval mode and restore each submodule's own mode afterwards."""
    if not isinstance(model, nn.Module):
        yield
        return
    # Restore per submodule, not just model.train(prev): a partly frozen model (e.g. BN kept in eval) must come
    # back exactly as it was. One walk records the modes; a model already wholly in eval mode is left alone, and only
    # the submodules whose mode changed are written back.
    modes = [(m, m.training) for m in model.modules()]
    if any(training for _, training in modes):
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            if module.training != training:
                module.training = training


def cast_toward(x_adv: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast fp32 `x_adv` to `dtype`, rounding each element toward the clean `x` so the ε-ball survives the cast."""
    if dtype == x_adv.dtype:
        return x_adv
    rounded = x_adv.to(dtype)
    if not dtype.is_floating_point or torch.finfo(dtype).bits >= 32:
        return rounded
    # Round-to-nearest may land one ulp outside the ball; the next representable value toward x is inside it,
    # because x itself is representable in `dtype` (it is the caller's own image).
    x_low = x.to(dtype)
    overshoot = (rounded.float() - x).abs() > (x_adv - x).abs()
    return torch.where(overshoot, torch.nextafter(rounded, x_low), rounded)


def _as_seeds(seeds: Tensor | None) -> Tensor | None:
    return None if seeds is None else torch.as_tensor(seeds, dtype=torch.int64)


class Attack:
    """Base class: validation, seeding, mode handling, projection and the model call shared by all attacks.

    Subclasses implement `_perturb(x, target, generator) -> AttackResult` on fp32 images `x` and may use
    `self._forward`, `self._loss_and_grad`, `self._project`, `self._random_init` and `self._step_direction`.

    Args:
        model (`nn.Module` or `Callable[[Tensor], Any]`):
            Maps images in [0, 1] of shape `[B, C, H, W]` to outputs (logits, embeddings, ...). Normalisation
            belongs inside the model. A module is put in eval mode during the attack and restored afterwards; a
            plain function is called as is.
        norm (`str`, *optional*, defaults to `"Linf"`):
            Threat model, "Linf" or "L2" (case-insensitive).
        eps (`float`):
            Radius of the ε-ball in [0, 1] pixel units (e.g. 4/255 for L∞).
        steps (`int`):
            Number of gradient iterations.
        loss_fn (`Callable[[Any, Tensor], Tensor]`, *optional*):
            `loss_fn(model_output, target)` returning a per-sample loss `[B]` to maximise. Defaults to `ce_loss`.
        seed (`int`, *optional*, defaults to 0):
            Seed of the attack's private `torch.Generator`; the same seed gives the same result.
        input_dtype (`torch.dtype`, *optional*):
            Dtype the model is fed. Defaults to the dtype of the module's first floating parameter (or of the
            images for a plain function). The perturbation itself always stays fp32.
        sample_seeds (`torch.Tensor`, *optional*):
            One seed per image of the batch (int64, `[B]`). When given, each image's random start is drawn from
            its own generator, so an image gets the same start whichever batch or process it lands in (the
            trainers key it to the image's position in the global batch: 1 process and N processes agree). Also
            accepted per call (`attack(images, target, sample_seeds=...)`, `perturb(...)`), which wins for that call.

    Class attributes:
        training_defaults (`dict`): keyword arguments the trainers add when they build this attack as the *training*
            attack (e.g. APGD: no early stop, return the max-loss point); the config's `attack_options` override them.
    """

    sample_seeds: Tensor | None = None
    training_defaults: dict[str, Any] = {}
    #: check that the images lie in [0, 1] (one host sync per call); the trainers turn it off for their own batches
    check_inputs: bool = True
    _init_index: Tensor | None = None  # rows of the batch the next random start is for (APGD's sub-batches)
    _init_round: int = 0

    supported_norms: tuple[str, ...] = ("Linf", "L2")

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Any],
        *,
        norm: str = "Linf",
        eps: float,
        steps: int,
        loss_fn: LossFn | None = None,
        seed: int = 0,
        input_dtype: torch.dtype | None = None,
        sample_seeds: Tensor | None = None,
    ):
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}.")
        check_budget(norm, eps)
        self.norm = canonical_norm(norm)
        if self.norm not in self.supported_norms:
            raise ValueError(
                f"{type(self).__name__} supports the {' and '.join(self.supported_norms)} threat models, not {self.norm}."
            )
        if int(steps) < 0:
            raise ValueError(f"steps must be >= 0, got {steps}.")
        self.model = model
        self.eps = float(eps)
        self.steps = int(steps)
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else ce_loss
        self.seed = int(seed)
        self.input_dtype = input_dtype
        self.sample_seeds = _as_seeds(sample_seeds)
        self._model_dtype: torch.dtype = input_dtype or torch.float32
        self._full_result = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps:.6g}, steps={self.steps}, seed={self.seed})"

    def __call__(self, images: Tensor, target: Tensor, *, sample_seeds: Tensor | None = None) -> Tensor:
        """Return the adversarial images (same dtype and device as `images`, detached); `sample_seeds` as in
        `perturb`."""
        return self._attack(images, target, full_result=False, sample_seeds=sample_seeds).x_adv

    def perturb(self, images: Tensor, target: Tensor, *, sample_seeds: Tensor | None = None) -> AttackResult:
        """Attack a batch.

        Args:
            images (`torch.Tensor`):
                Unnormalised images in [0, 1], batch first (`[B, C, H, W]`), any floating dtype.
            target (`torch.Tensor`):
                Class labels `[B]` (long) or any tensor with batch first that `loss_fn` understands (e.g. clean
                embeddings for an embedding-distance loss).

        Returns:
            `AttackResult` with tensors in the dtype and on the device of `images`.
        """
        return self._attack(images, target, full_result=True, sample_seeds=sample_seeds)

    def _attack(self, images: Tensor, target: Tensor, *, full_result: bool,
                sample_seeds: Tensor | None = None) -> AttackResult:
        if sample_seeds is None:
            return self._attack_with_seeds(images, target, full_result)
        saved, self.sample_seeds = self.sample_seeds, _as_seeds(sample_seeds)
        try:
            return self._attack_with_seeds(images, target, full_result)
        finally:
            self.sample_seeds = saved

    def _attack_with_seeds(self, images: Tensor, target: Tensor, full_result: bool) -> AttackResult:
        # Subclasses may skip work that only the AttackResult fields besides x_adv need (PGD's final scoring
        # forward) when called as `attack(images, target)`.
        self._full_result = full_result
        self._model_dtype = self.input_dtype or _infer_input_dtype(self.model, images)
        devices, device_type = [], "cuda"
        if images.device.type != "cpu":
            device_type = images.device.type
            devices = [images.device.index if images.device.index is not None else 0]
        # inference_mode(False) before cloning: an eval loop wrapped in torch.inference_mode() must still be
        # attackable, and inference tensors cannot enter autograd.
        with (
            torch.inference_mode(False),
            torch.random.fork_rng(devices=devices, device_type=device_type),
            eval_mode(self.model),
        ):
            x = self._validate_images(images, check_range=self.check_inputs)
            if isinstance(target, Tensor):
                target = target.detach().to(x.device).clone()
            generator = torch.Generator(device=x.device)
            generator.manual_seed(self.seed)
            if self.sample_seeds is not None and len(self.sample_seeds) != x.shape[0]:
                raise ValueError(f"sample_seeds has {len(self.sample_seeds)} entries for a batch of {x.shape[0]}.")
            self._init_index, self._init_round = None, 0
            result = self._perturb(x, target, generator)
        x_adv = cast_toward(self._clip(x, result.x_adv.float()), x, images.dtype)
        # `attack(images, target)` returns x_adv alone: no second clip / cast for the max-loss point
        x_max = cast_toward(self._clip(x, result.x_max_loss.float()), x, images.dtype) if full_result else x_adv
        return AttackResult(x_adv=x_adv.detach(), x_max_loss=x_max.detach(), loss=result.loss.detach(), success=result.success)

    def _perturb(self, x: Tensor, target: Tensor, generator: torch.Generator) -> AttackResult:
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------------------------------

    @staticmethod
    def _validate_images(images: Tensor, check_range: bool = True) -> Tensor:
        if not isinstance(images, Tensor) or not images.is_floating_point():
            raise TypeError("images must be a floating-point tensor of unnormalised pixels in [0, 1].")
        if images.dim() < 2:
            raise ValueError(f"images must be batch-first ([B, C, H, W]); got shape {tuple(images.shape)}.")
        x = images.detach().float().clone()
        if not check_range:
            return x.clamp_(0.0, 1.0)
        lo, hi = torch.aminmax(x)
        # One host sync per call, not per iteration; tolerance absorbs float noise from upstream resizing.
        lo, hi = float(lo), float(hi)
        if not (lo >= -1e-6 and hi <= 1 + 1e-6):
            raise ValueError(
                f"images must be unnormalised pixels in [0, 1], got values in [{lo:.4g}, {hi:.4g}]. Pass raw [0,1] "
                "images and put the mean/std normalisation inside the model."
            )
        return x.clamp_(0.0, 1.0)

    def _view(self, t: Tensor, like: Tensor) -> Tensor:
        return t.view(-1, *([1] * (like.dim() - 1)))

    def _forward(self, x_adv: Tensor) -> Any:
        out = self.model(x_adv if x_adv.dtype == self._model_dtype else x_adv.to(self._model_dtype))
        # Losses in bf16 lose the small differences APGD's step-size schedule compares; compare in fp32.
        if isinstance(out, Tensor) and out.dtype in _LOW_PRECISION:
            out = out.float()
        return out

    def _loss(self, loss_fn: LossFn, output: Any, target: Tensor, batch_size: int) -> Tensor:
        loss = loss_fn(output, target)
        if not isinstance(loss, Tensor) or loss.shape != (batch_size,):
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return a per-sample loss of shape [{batch_size}] (no reduction), got {shape}."
            )
        return loss

    def _loss_and_grad(
        self, x: Tensor, delta: Tensor, target: Tensor, loss_fn: LossFn, *, need_grad: bool = True
    ) -> tuple[Tensor, Tensor | None, Any]:
        """Per-sample loss at x + delta, its gradient w.r.t. delta only, and the (detached) model output."""
        if not need_grad:
            with torch.no_grad():
                out = self._forward(x + delta)
                loss = self._loss(loss_fn, out, target, x.shape[0])
            return loss.float(), None, out
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self._forward(x + delta)
            loss = self._loss(loss_fn, out, target, x.shape[0])
            # autograd.grad with inputs=delta: parameter .grad (and DeepSpeed's hooks on it) are never touched.
            (grad,) = torch.autograd.grad(loss.sum(), delta)
        if isinstance(out, Tensor):
            out = out.detach()
        return loss.detach().float(), grad, out

    def _project(self, x: Tensor, delta: Tensor) -> Tensor:
        """Project delta so that x + delta lies in the ε-ball and in [0, 1]."""
        if self.norm == "Linf":
            # Ball and box are both coordinate-wise intervals, so clamping twice is the exact projection.
            delta = delta.clamp(-self.eps, self.eps)
            return (x + delta).clamp(0.0, 1.0) - x
        delta = (x + delta).clamp(0.0, 1.0) - x
        # Shrinking toward x keeps the point in the box (x is in it and the box is convex).
        norms = per_sample_norm(delta, "L2")
        factor = torch.clamp(self.eps / (norms + 1e-12), max=1.0)
        return delta * self._view(factor, delta)

    def _clip(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Final guard on returned points: exact box, and ball up to float rounding."""
        delta = self._project(x, x_adv - x)
        x_adv = (x + delta).clamp(0.0, 1.0)
        if self.norm == "Linf":
            x_adv = torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps)
        return x_adv

    def _random_init(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Uniform sample from the ε-ball, projected into the box."""
        if self.sample_seeds is not None:
            return self._project(x, self._per_sample_init(x))
        if self.norm == "Linf":
            delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * self.eps
        else:
            direction = torch.randn(x.shape, generator=generator, device=x.device)
            direction = direction / self._view(per_sample_norm(direction, "L2") + 1e-12, x)
            # Radius eps * u^(1/d) makes the sample uniform in the ball volume, not clumped at its centre.
            d = x[0].numel()
            radius = self.eps * torch.rand(x.shape[0], generator=generator, device=x.device) ** (1.0 / d)
            delta = direction * self._view(radius, x)
        return self._project(x, delta)

    def _per_sample_init(self, x: Tensor) -> Tensor:
        """The random start of each row of `x` from its own seed (`sample_seeds`, mixed with the restart count)."""
        seeds = self.sample_seeds if self._init_index is None else self.sample_seeds[self._init_index.cpu()]
        k, self._init_round = self._init_round, self._init_round + 1
        d = x[0].numel()
        # one generator, re-seeded per row (a seeded generator's stream depends on its seed only), each row's draws
        # written in place; the arithmetic then runs once on the whole batch (element-wise: the same values)
        g = torch.Generator(device=x.device)
        draws = torch.empty(x.shape, device=x.device)
        if self.norm != "Linf":
            radii, norms = torch.empty(x.shape[0], device=x.device), torch.empty(x.shape[0], device=x.device)
        for i, s in enumerate(seeds.tolist()):
            g.manual_seed((int(s) * 1_000_003 + k * 7_919) % (2**63 - 1))
            if self.norm == "Linf":
                torch.rand(x.shape[1:], generator=g, device=x.device, out=draws[i])
            else:
                torch.randn(x.shape[1:], generator=g, device=x.device, out=draws[i])
                torch.rand((), generator=g, device=x.device, out=radii[i])
                norms[i] = draws[i].norm()  # per row, as the row's own reduction (bitwise the same as before)
        if self.norm == "Linf":
            return (draws * 2 - 1) * self.eps
        radius = self.eps * radii ** (1.0 / d)
        return draws / self._view(norms + 1e-12, draws) * self._view(radius, draws)

    def _step_direction(self, grad: Tensor) -> Tensor:
        """Steepest-ascent direction of unit norm: sign for L∞, normalised gradient for L2."""
        if self.norm == "Linf":
            return grad.sign()
        return grad / self._view(per_sample_norm(grad, "L2") + 1e-12, grad)


def build_attack(name: str, model: nn.Module | Callable[[Tensor], Any], **kwargs: Any) -> Attack:
    """Build a registered attack by name.

    Args:
        name (`str`):
            A registered name ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "autoattack", or one added with
            `@ATTACKS.register`).
        model (`nn.Module` or `Callable`):
            The model to attack (images in [0, 1]).
        **kwargs:
            Passed to the attack's constructor (`eps=`, `norm=`, `steps=`, ...).

    Raises:
        KeyError: for an unknown name; the message lists the known names.
    """
    return ATTACKS.get(name)(model, **kwargs)
