"""Guards around a training run: nothing of an earlier run is lost, nothing wrong finishes as a success.

- an `output_dir` that already holds a run (checkpoints or a saved model) is refused unless the run resumes or
  `--overwrite_output_dir` is given (:func:`check_output_dir`);
- `--resume_from_checkpoint true` takes the newest *complete* checkpoint (one with `trainer_state.json`, the file the
  Trainer writes last), and an explicit incomplete one is refused naming the complete one (:func:`resolve_resume`);
- resuming with another method or threat model is refused unless `--resume_allow_config_change`
  (:func:`check_resume_config`);
- a run whose loader yields no batch, or that ends before its optimizer steps are done, fails
  (:func:`check_has_batches`, :func:`check_steps_trained`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from ..layout import (
    HF_WEIGHTS_NAME,
    OPEN_CLIP_WEIGHTS_NAME,
    RADAPT_WEIGHTS_NAME,
    VLMROBUST_CONFIG_NAME,
)

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: the arguments that define what a run trains: a resumed run must keep them (or say it changes them)
RESUME_KEYS = ("method", "attack", "attack_norm", "epsilon", "attack_steps", "attack_step_size", "attack_options",
               "attack_random_start", "attack_momentum", "attack_momentum_style", "epsilon_schedule",
               "epsilon_schedule_start", "epsilon_schedule_end", "epsilon_schedule_unit")
_MODEL_FILES = (OPEN_CLIP_WEIGHTS_NAME, HF_WEIGHTS_NAME, RADAPT_WEIGHTS_NAME, "adapter_model.safetensors")


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-<step>` folders of `output_dir`, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def is_complete(checkpoint: str | os.PathLike) -> bool:
    return (Path(checkpoint) / TRAINER_STATE_NAME).is_file()


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest-step checkpoint of `output_dir` that holds `trainer_state.json` (None: there is none)."""
    done = [p for p in checkpoints(output_dir) if is_complete(p)]
    return str(done[-1]) if done else None


def _wants_resume(value) -> bool | None:
    """True / False for the boolean spellings of `resume_from_checkpoint`, None for a path."""
    if value in (None, "", False) or (isinstance(value, str) and value.lower() in ("false", "no", "0")):
        return False
    if value is True or (isinstance(value, str) and value.lower() in ("true", "yes", "1")):
        return True
    return None


def resolve_resume(output_dir: str | os.PathLike, value, *, fresh_if_none: bool = False) -> str | None:
    """The checkpoint folder to resume from (None: start fresh).

    `value` is `resume_from_checkpoint` as given: a path, `True` / `"true"` (the newest complete checkpoint of
    `output_dir`) or a false value. An incomplete path (killed during its save) is refused naming the newest complete
    one; `True` with no complete checkpoint raises, or starts fresh when `fresh_if_none` (the recipes: a first run
    launched with `--resume_from_checkpoint true` just starts).
    """
    wants = _wants_resume(value)
    if wants is False:
        return None
    if wants:
        last = newest_complete_checkpoint(output_dir)
        if last is None:
            partial = [p.name for p in checkpoints(output_dir)]
            if fresh_if_none and not partial:
                print(f"[vlmrobust] no checkpoint in {output_dir} to resume from: starting fresh.")
                return None
            raise ValueError(f"--resume_from_checkpoint true: no complete checkpoint (one with {TRAINER_STATE_NAME}) "
                             f"in {output_dir}" + (f"; incomplete: {', '.join(partial)}" if partial else "") +
                             ". Start afresh with --overwrite_output_dir, or name a checkpoint folder.")
        return last
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    if not is_complete(path):
        last = newest_complete_checkpoint(path.parent)
        hint = f"resume from {last} (the newest complete one)" if last else "no complete checkpoint is beside it"
        raise ValueError(f"{path} is incomplete (no {TRAINER_STATE_NAME}: the run was killed while saving it); "
                         f"{hint}, or use --resume_from_checkpoint true.")
    return str(path)


def check_output_dir(output_dir: str | os.PathLike, *, resume: str | None, overwrite: bool) -> None:
    """Refuse to train into a folder that holds an earlier run's checkpoints or model, unless told to."""
    folder = Path(output_dir)
    if resume is not None or overwrite or not folder.is_dir():
        return
    held = [p.name for p in checkpoints(folder)] + [n for n in _MODEL_FILES if (folder / n).is_file()]
    if held:
        raise FileExistsError(
            f"{folder} already holds a run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}): training "
            "would delete its checkpoints and overwrite its model. Pick another --output_dir, pass "
            "--overwrite_output_dir to replace it, or --resume_from_checkpoint true to continue it.")


def _saved_config(checkpoint: str | os.PathLike) -> dict | None:
    path = Path(checkpoint) / VLMROBUST_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({err}): cannot check what the checkpoint was trained with.") from None
    return {**saved.get("config", {}), "method": saved.get("method", saved.get("config", {}).get("method"))}


def _differs(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a != b


def _show(key: str, value) -> str:
    if key in ("epsilon", "attack_step_size") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value * 255:.4g}/255"
    return repr(value)


def check_resume_config(args, checkpoint: str | os.PathLike) -> None:
    """Refuse to resume `checkpoint` with another method / threat model than it was trained with, unless
    `args.resume_allow_config_change` (then the saved config states the new values from this point on)."""
    saved = _saved_config(checkpoint)
    if saved is None:
        return
    now = {**args.to_vlmrobust_dict()["config"], "method": args.method}
    changed = [f"{k}: {_show(k, saved[k])} -> {_show(k, now.get(k))}" for k in RESUME_KEYS
               if k in saved and _differs(saved[k], now.get(k))]
    if changed and not getattr(args, "resume_allow_config_change", False):
        raise ValueError(f"Resuming {checkpoint} with another training setup ({'; '.join(changed)}): the saved "
                         "config would misstate how the model was trained. Resume with the checkpoint's values, "
                         "start a new --output_dir, or pass --resume_allow_config_change to continue anyway.")
    if changed:
        print(f"[vlmrobust] resuming {checkpoint} with changed settings ({'; '.join(changed)}).")


def check_has_batches(args, dataset) -> None:
    """Refuse a training set that gives no batch (e.g. fewer examples than one batch with `dataloader_drop_last`)."""
    try:
        n = len(dataset)
    except TypeError:  # an iterable dataset: counted after training
        return
    batch = args.per_device_train_batch_size * max(args.world_size, 1)
    if n == 0 or (args.dataloader_drop_last and n < batch):
        raise ValueError(
            f"The training set ({n} examples) gives no batch: per_device_train_batch_size "
            f"{args.per_device_train_batch_size} x {max(args.world_size, 1)} process(es)"
            + (" with dataloader_drop_last drops them all" if n else "") +
            ". Lower the batch size, turn off dataloader_drop_last, or give more data.")


def check_steps_trained(trainer) -> None:
    """Fail a run that ended before the optimizer steps it was asked for (its model is not the requested run).

    A stop a callback asked for (`control.should_training_stop`, e.g. early stopping) is honoured with a note;
    a run of zero steps always fails.
    """
    done, asked = trainer.state.global_step, trainer.state.max_steps
    if done >= max(asked, 1):
        return
    if done > 0 and getattr(trainer.control, "should_training_stop", False):
        print(f"[vlmrobust] training stopped by a callback after {done} of {asked} optimizer steps.")
        return
    raise RuntimeError(
        f"Training stopped after {done} of {asked} optimizer steps (the data ran out or the loop ended early); "
        "the model is not the run that was asked for. Check the dataset and batch size, or set max_steps to the "
        f"steps the data gives. Checkpoints so far are in {trainer.args.output_dir}.")


def nonfinite_message(step: int, output_dir: str | os.PathLike) -> str:
    """What a run stopped by a NaN / Inf loss or gradient says: the step and the last good checkpoint."""
    last = newest_complete_checkpoint(output_dir)
    where = (f"the last good checkpoint is {last} (resume with --resume_from_checkpoint true)" if last
             else "no checkpoint was saved before it")
    return (f"Non-finite loss or gradient (NaN / Inf) at optimizer step {step}: training stopped before the "
            f"optimizer step, so no weight took it; {where}. Lower the learning rate or the budget, check the data, "
            "or pass --nonfinite_loss skip to skip such steps.")


def max_abs_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Whether every element of `tensors` is finite, as a 0-dim bool tensor on their device (no host sync)."""
    by_dtype: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for t in tensors:
        by_dtype[(t.device, t.dtype)].append(t)
    oks = [torch.isfinite(torch.stack(torch._foreach_norm(ts, float("inf")))).all() for ts in by_dtype.values()]
    device = tensors[0].device
    return torch.stack([o.to(device) for o in oks]).all()


class NonFiniteGuard:
    """The trainer's check that an optimizer step's losses and gradients are finite (`nonfinite_loss`), a mixin of
    `RobustTrainer` before `transformers.Trainer` (it reads the Trainer's `args`, `accelerator` and engine)."""

    def _loss_scale(self) -> float:
        """The fp16 loss scale the gradients carry before the optimizer step (1 in fp32 / bf16)."""
        if self.is_deepspeed_enabled:
            engine = self.model_wrapped
            return float(engine.optimizer.loss_scale) if engine.fp16_enabled() else 1.0
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def _all_finite(self, model: nn.Module) -> bool:
        """Whether every loss of this optimizer step, and every gradient, is finite on every rank (one small
        all-reduce per step); gradients are not checked under fp16 loss scaling, whose scaler skips those steps."""
        ok = self._finite if self._finite is not None else torch.tensor(True)
        self._finite = None
        if not self.is_deepspeed_enabled and self._loss_scale() == 1.0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                # max |g| per tensor (one foreach call, no per-tensor Python ops): finite iff every element is (NaN
                # propagates through the max, and the max of finite values cannot overflow)
                ok = ok.to(grads[0].device) & max_abs_finite(grads)
        bad = (~ok).float().reshape(1).to(self.args.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        return bad.item() == 0

    def _defers_grad_check(self) -> bool:
        """Whether this step's gradients are checked on the norm the Trainer computes anyway (`_get_grad_norm`)
        instead of a pass of their own: when a bad step stops the run (`nonfinite_loss='stop'`), outside DeepSpeed
        and fp16 loss scaling; skipping a step needs the check before the weight-space transforms see the step."""
        return self.args.nonfinite_loss == "stop" and not self.is_deepspeed_enabled and self._loss_scale() == 1.0

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self._finite is not None and self._defers_grad_check():
            losses_ok, self._finite = self._finite, None
            ok = losses_ok & torch.isfinite(torch.as_tensor(grad_norm)).to(losses_ok.device)
            if self.accelerator.num_processes > 1:
                ok = self.accelerator.reduce((~ok).float().reshape(1).to(self.args.device), reduction="sum") == 0
            # a non-finite norm from finite gradients (an overflowing sum of squares) is not a bad step: confirm
            # element-wise (every rank takes this branch together: `ok` was reduced)
            self._finite = losses_ok
            if not bool(ok) and not self._all_finite(model):
                raise FloatingPointError(nonfinite_message(self.state.global_step + 1, self.args.output_dir))
            self._finite = None
        return grad_norm
