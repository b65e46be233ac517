"""Shared configuration of every robust fine-tuning method: `TrainingArguments` + the threat model + ε schedule."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import TrainingArguments

from .. import __version__
from ..attacks import ATTACKS, check_budget
from ..optim import build_weight_space
from .performance import resolve_fast_paths, take_over_hf_compile
from .schedules import EpsilonSchedule


@dataclass
class RobustTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the inner attack, its budget schedule and the weight-space hooks.

    Args:
        method (`str`): name of the method in the `METHODS` registry (set by each subclass).
        attack (`str`, *optional*, defaults to `"pgd"`): training attack, any attack of the `ATTACKS` registry that
            takes the method's loss as `loss_fn`: `"pgd"`, or `"apgd"` (APGD on the method's loss, max-loss point,
            no early stop, as in arXiv 2508.14079's AT study).
        attack_options (`dict` or `str`, *optional*): extra keyword arguments of the training attack (a JSON object
            on the command line, e.g. `'{"rho": 0.5}'`), over the attack's own `training_defaults`.
        attack_norm (`str`, *optional*, defaults to `"Linf"`): `"Linf"` or `"L2"`.
        epsilon (`float`, *optional*, defaults to 4/255): budget in [0, 1] pixel units (4/255, not 4).
        attack_steps (`int`, *optional*, defaults to 10): inner iterations.
        attack_step_size (`float`, *optional*, defaults to 1/255): PGD step α (FARE's reference value).
        attack_random_start (`bool`, *optional*, defaults to `True`): uniform start in the ε-ball.
        attack_momentum (`float`, *optional*, defaults to 0.0): PGD momentum μ (0: none; FARE's reference uses 0.9).
        attack_momentum_style (`str`, *optional*, defaults to `"fare"`): `"fare"`, the FARE reference's rule
            `v ← s(μ·v + s(∇))` (s = sign for L∞, L2-normalisation for L2; under L∞ with μ < 1 it is the plain sign
            step wherever ∇ ≠ 0), or `"mi-fgsm"` (`v ← μ·v + ∇/‖∇‖₁`, step along s(v)).
        attack_seed (`int`, *optional*): base seed of the attack's own generator; defaults to `seed`. The attack at
            optimizer step t, micro-batch k on rank r uses a seed derived from (attack_seed, t, k, r), so resumed runs repeat it.
        attack_seed_scope (`str`, *optional*, defaults to `"sample"`): what the random start is keyed to.
            `"sample"`: each image's start comes from (attack_seed, step, the image's position in the global
            batch), so 1 process and N processes (and any gradient-accumulation split of the same global batch)
            train the same model. `"rank"`: one draw per micro-batch keyed to (attack_seed, step, micro-batch,
            rank), the behaviour of vlmrobust 0.1.0 before this option, which the README's quickstart tables were measured with.
        epsilon_schedule (`str`, *optional*, defaults to `"constant"`): `"constant"` or `"linear"`
            (Epsilon-Scheduling, arXiv 2509.23325: 0 until T1, linear ramp to ε at T2, then constant).
        epsilon_schedule_start (`float`, *optional*, defaults to 0): T1.
        epsilon_schedule_end (`float`, *optional*, defaults to 0): T2.
        epsilon_schedule_unit (`str`, *optional*, defaults to `"steps"`): unit of T1 / T2, `"steps"` or `"epochs"`.
        weight_space (`str`, *optional*, defaults to `"none"`): weight-space hooks from `vlmrobust.optim.WEIGHT_SPACE`,
            `'+'`-joined: `"l2sp"` (L2-SP, arXiv 1802.01483), `"digrap"` (DiGraP, arXiv 2502.15895), `"ftp"` (FTP,
            arXiv 2310.19182), `"spd"` (SPD, arXiv 2411.01713). Hooks that read θ₀ make the trainer keep the shared
            frozen snapshot of the trained module (θ₀ = 0 for LoRA adapter tensors).
        l2sp_lambda (`float`, *optional*, defaults to 0.01): λ of L2-SP, `g ← g + λ·(θ − θ₀)` (no paper default for
            CLIP; tune it).
        precision (`str`, *optional*, defaults to `"auto"`): `"bf16"` (autocast over the whole step; δ and its
            projection stay fp32), `"fp32"`, or `"auto"`: bf16 on a CUDA GPU with bf16 (without DeepSpeed), fp32
            elsewhere. `bf16=True` is the same as `"bf16"`. Resolved in place.
        compile_encoder (`bool`, *optional*): `torch.compile` the trained image encoder and the frozen target in
            place; default (None): on for CLIP backends on a CUDA GPU, off on the CPU. HF's `torch_compile=True`
            means the same.
        compile_mode (`str`, *optional*): `torch.compile` mode (e.g. `"max-autotune-no-cudagraphs"`).
        fused_optimizer (`bool`, *optional*): fused AdamW (`optim="adamw_torch_fused"`); default: on a CUDA GPU.
        fast_dataloader (`bool`, *optional*): DataLoader workers (`min(4, cpus // 2)` if 0), persistent workers,
            pinned memory, no per-step NaN check of the loss (a host sync); default: on a CUDA GPU.
        digrap_mu (`float`, *optional*, defaults to 0.5): DiGraP's μ, learning rate of the scalar Adam on each ω.
        digrap_omega_init (`float`, *optional*, defaults to 0.0): DiGraP's ω at the start, in [0, 1].
        digrap_learn_omega (`bool`, *optional*, defaults to `True`): learn ω by hypergradient (else fixed).
        ftp_lr (`float`, *optional*, defaults to 1e-2): FTP's learning rate of the scalar Adam on each radius γ.
        ftp_k (`float`, *optional*, defaults to 1.0): FTP's annealing factor of positive hypergradients (a float).
        ftp_gamma_init (`float`, *optional*, defaults to 1e-8): FTP's radius on the first step.
        spd_lambda (`float`, *optional*, defaults to 1.0): SPD's decay strength λ (AdamSPD's `weight_decay`; set
            `weight_decay` 0 to match AdamSPD, whose decay replaces AdamW's).
        bad_images (`str`, *optional*, defaults to `"fail"`): an unreadable / corrupt training image: `"fail"` stops
            the run with an error naming the row and the file; `"skip"` leaves each one out of its batch, and the
            run reports how many (and the first few files) in its training metrics (`results.json` → `run` →
            `train_metrics`), the trainer log and once on screen at the end. Taken by the classification image
            datasets (Hub, `imagefolder:`, `parquet:`, `webdataset:`); other training sets warn that it has no effect.
    """

    method: str = field(default="base", metadata={"help": "Method name in the METHODS registry."})
    attack: str = field(default="pgd", metadata={"help": "Training attack from the attack registry: 'pgd', 'apgd'."})
    attack_options: dict | str | None = field(default=None, metadata={
        "help": "Extra keyword arguments of the training attack, as a JSON object (e.g. '{\"rho\": 0.5}')."})
    attack_norm: str = field(default="Linf", metadata={"help": "Threat model: 'Linf' or 'L2'."})
    epsilon: float = field(default=4 / 255, metadata={"help": "Budget in [0,1] pixel units, e.g. 0.0157 = 4/255."})
    attack_steps: int = field(default=10, metadata={"help": "Inner attack iterations."})
    attack_step_size: float | None = field(default=1 / 255, metadata={"help": "PGD step size (pixel units)."})
    attack_random_start: bool = field(default=True, metadata={"help": "Random uniform start in the eps-ball."})
    attack_momentum: float = field(default=0.0, metadata={"help": "Momentum on the PGD step (FARE ref.: 0.9)."})
    attack_momentum_style: str = field(default="fare", metadata={"help": "'fare' (FARE reference) or 'mi-fgsm'."})
    attack_seed: int | None = field(default=None, metadata={"help": "Attack seed (defaults to --seed)."})
    attack_seed_scope: str = field(default="sample", metadata={
        "help": "'sample': random starts keyed to the image's position in the global batch (same model on 1 or N "
                "processes); 'rank': keyed to (micro-batch, rank)."})
    epsilon_schedule: str = field(default="constant", metadata={"help": "'constant' or 'linear' (Eps-Scheduling)."})
    epsilon_schedule_start: float = field(default=0.0, metadata={"help": "T1: eps is 0 before it."})
    epsilon_schedule_end: float = field(default=0.0, metadata={"help": "T2: eps reaches its target here."})
    epsilon_schedule_unit: str = field(default="steps", metadata={"help": "'steps' or 'epochs'."})
    weight_space: str = field(default="none", metadata={
        "help": "Weight-space hooks, '+'-joined names from vlmrobust.optim.WEIGHT_SPACE (e.g. 'l2sp'), or 'none'."})
    l2sp_lambda: float = field(default=0.01, metadata={"help": "L2-SP lambda: g <- g + lambda * (theta - theta_0)."})
    # fast paths (vlmrobust.trainers.performance): "auto" / None = on for a CUDA GPU, plain fp32 on the CPU
    precision: str = field(default="auto", metadata={
        "help": "'auto' (bf16 autocast on a CUDA GPU, fp32 on CPU), 'bf16' or 'fp32'; the perturbation stays fp32."})
    compile_encoder: bool | None = field(default=None, metadata={
        "help": "torch.compile the image encoder in place (default: on for CLIP backends on a CUDA GPU)."})
    compile_mode: str | None = field(default=None, metadata={"help": "torch.compile mode of compile_encoder."})
    fused_optimizer: bool | None = field(default=None, metadata={
        "help": "Fused AdamW (default: on a CUDA GPU)."})
    fast_dataloader: bool | None = field(default=None, metadata={
        "help": "DataLoader workers, persistent workers, pinned memory (default: on a CUDA GPU)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Train into an output_dir that already holds a run (its checkpoints and model are replaced)."})
    nonfinite_loss: str = field(default="stop", metadata={
        "help": "A NaN / Inf loss or gradient: 'stop' the run (naming the step and the last good checkpoint) or "
                "'skip' the optimizer step."})
    resume_allow_config_change: bool = field(default=False, metadata={
        "help": "Resume a checkpoint with another method / epsilon / attack than it was trained with."})
    digrap_mu: float = field(default=0.5, metadata={"help": "DiGraP: lr of the scalar Adam on each omega."})
    digrap_omega_init: float = field(default=0.0, metadata={"help": "DiGraP: initial omega, in [0, 1]."})
    digrap_learn_omega: bool = field(default=True, metadata={"help": "DiGraP: learn omega by hypergradient."})
    ftp_lr: float = field(default=1e-2, metadata={"help": "FTP: lr of the scalar Adam on each radius gamma."})
    ftp_k: float = field(default=1.0, metadata={"help": "FTP: annealing factor of positive hypergradients."})
    ftp_gamma_init: float = field(default=1e-8, metadata={"help": "FTP: radius on the first step."})
    spd_lambda: float = field(default=1.0, metadata={"help": "SPD: decay strength lambda."})
    bad_images: str = field(default="fail", metadata={
        "help": "An unreadable / corrupt training image: 'fail' (stop, naming the file) or 'skip' (leave it out; "
                "the count and the first files are reported at the end and in results.json)."})

    # Trainer defaults that suit image-only robust training
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep pixel_values/labels columns."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers; no telemetry by default."})

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise ValueError(f"attack {self.attack!r} is not a registered attack; registered: "
                             f"{', '.join(ATTACKS.names())}.")
        if isinstance(self.attack_options, str):
            text = self.attack_options.strip()
            self.attack_options = json.loads(text) if text else None
        if self.attack_options is not None and not isinstance(self.attack_options, dict):
            raise ValueError(f"attack_options must be a mapping (JSON object), got {self.attack_options!r}.")
        build_weight_space(self)  # checks the names and each hook's own arguments
        self.attack_norm = {"linf": "Linf", "l2": "L2"}.get(str(self.attack_norm).lower(), self.attack_norm)
        if self.attack_momentum_style not in ("fare", "mi-fgsm"):
            raise ValueError(f"attack_momentum_style must be 'fare' (the FARE reference's rule) or 'mi-fgsm', got "
                             f"{self.attack_momentum_style!r}.")
        check_budget(self.attack_norm, self.epsilon)
        if self.attack_steps < 1:
            raise ValueError(f"attack_steps must be >= 1, got {self.attack_steps}.")
        if self.attack_step_size is not None:
            if self.attack_step_size <= 0:
                raise ValueError(f"attack_step_size must be > 0, got {self.attack_step_size}.")
            if self.attack_norm == "Linf" and self.attack_step_size > 1:
                raise ValueError(
                    f"attack_step_size={self.attack_step_size} is larger than the [0,1] pixel range: "
                    f"did you mean {self.attack_step_size:g}/255?"
                )
        if self.attack_seed_scope not in ("sample", "rank"):
            raise ValueError(f"attack_seed_scope must be 'sample' or 'rank', got '{self.attack_seed_scope}'.")
        if self.attack_seed is None:
            self.attack_seed = self.seed
        _ = self.epsilon_scheduler  # validates the schedule fields
        from ..data.classification import check_bad_images

        check_bad_images(self.bad_images)
        if self.nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"nonfinite_loss must be 'stop' or 'skip', got {self.nonfinite_loss!r}.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive number of optimizer steps, or -1 to train "
                             f"num_train_epochs epochs; got {self.max_steps}.")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be > 0 when max_steps is -1; got {self.num_train_epochs}.")
        resolve_fast_paths(self)
        super().__post_init__()
        take_over_hf_compile(self)

    # -- secrets never reach the disk: a pickled config (training_args.bin) has no `*_token` value ----------------
    def __getstate__(self) -> dict:
        return {k: None if k.endswith("_token") else v for k, v in self.__dict__.items()}

    def __copy__(self):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo):
        import copy

        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    @property
    def epsilon_scheduler(self) -> EpsilonSchedule:
        return EpsilonSchedule(self.epsilon, self.epsilon_schedule, self.epsilon_schedule_start,
                               self.epsilon_schedule_end, self.epsilon_schedule_unit)

    # -- JSON round trip ------------------------------------------------------------------------------------------
    def to_vlmrobust_dict(self) -> dict:
        """The config as saved next to checkpoints: `method`, `vlmrobust_version` and every argument."""
        return {"method": self.method, "vlmrobust_version": __version__, "config": _jsonable(self.to_dict())}

    def save_json(self, path: str | os.PathLike) -> Path:
        from ..utils.io import atomic_write_json

        return atomic_write_json(path, self.to_vlmrobust_dict())

    @classmethod
    def from_dict(cls, d: dict) -> RobustTrainingArguments:
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in d.items() if k in names})


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = str(v)
    return out
