"""The plain fp32 twins of `benchmarks/perf_models.py` are the same maths as the toolkit's steps.

The performance check divides each toolkit step by its twin; the ratio means something only if the twin computes
what the trainer computes. Here both run on the same tiny open_clip from the same weights (the GRACE twin's LoRA
adapters copied from the toolkit's), on the same batches in the same order, with a deterministic attack (no random
start; the twins' random start is their own generator, not the toolkit's per-image seeds). Per optimizer step, the
loss and the gradient the optimizer sees (after DiGraP's projection / GRACE's two passes, and clipping) must agree:

- DiGraP (clean CE, ω learned; ω starts at 0.5 so the projection acts from the second step): loss within 1e-5
  relative, gradients within 1e-3 relative (L2 of the difference over L2; measured ~1e-7 at the first step and
  ~1.5e-4 after it: the attention's key bias has a gradient that is 0 up to rounding, AdamW's first step turns that
  rounding into ±lr, and θ − θ₀ of those entries then differs between any two implementations), ω within 1e-6.
- GRACE (PGD-3, LoRA r 8, LAR-AWP ρ 0.05 ranks 4/2/0, Gram volume): loss within 1e-4 relative, gradients within
  1e-3 relative (measured ~1.5e-7: the twin's SVD and the toolkit's eigh-based rank-r factors, its dense W + Δ and
  the toolkit's low-rank branch, differ in rounding only).
"""

import sys
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from vlmrobust.models import create_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import perf_models as pm  # noqa: E402

STEPS = 3


class Capture(TrainerCallback):
    """The gradients the optimizer is about to see, per optimizer step."""

    def __init__(self, trainer):
        self.trainer, self.grads = trainer, []

    def on_pre_optimizer_step(self, args, state, control, **kw):
        model = self.trainer.unwrapped(self.trainer.model)
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def run_toolkit(method, model, dataset, **overrides):
    """Train `STEPS` steps of `method`; returns (losses, gradients per step, the batches seen, trainer)."""
    from vlmrobust.trainers import METHODS

    m = METHODS.get(method)
    kw = dict(output_dir=tempfile.mkdtemp(), max_steps=STEPS, per_device_train_batch_size=len(dataset), warmup_steps=0,
              lr_scheduler_type="constant", epsilon=4 / 255, attack_step_size=1 / 255, attack_random_start=False,
              save_strategy="no", logging_steps=10**9, report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
              precision="fp32", compile_encoder=False, fast_dataloader=False)
    kw.update(overrides)
    trainer = m.trainer_class(model, m.config_class(**kw), train_dataset=dataset, **m.trainer_kwargs(dataset))
    cap = Capture(trainer)
    trainer.add_callback(cap)
    losses, batches = [], []
    step = trainer.training_step

    def recording_step(model, inputs, *a, **k):
        batches.append((inputs["pixel_values"].clone(), inputs["labels"].clone()))
        out = step(model, inputs, *a, **k)
        losses.append(float(out))
        return out

    trainer.training_step = recording_step
    trainer.train()
    return losses, cap.grads, batches, trainer


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def dataset(n=8):
    return pm.SyntheticImages(n, 32, distinct=n, num_classes=4, seed=1)


def test_digrap_twin_is_digraps_step(tiny_open_clip_dir):
    ds = dataset()
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    losses, grads, batches, trainer = run_toolkit("digrap", model, ds, digrap_omega_init=0.5, learning_rate=1e-4)
    omegas = trainer.weight_space.transforms[0].omegas()
    twin_model = create_model(f"local-dir:{tiny_open_clip_dir}")
    record = []
    step = pm.digrap_plain_step(twin_model, torch.device("cpu"), ds.classnames, omega_init=0.5, lr=1e-4,
                                record=record)
    twin_losses = [float(step(x, y)) for x, y in batches]
    assert twin_losses == pytest.approx(losses, rel=1e-5)
    for k in range(STEPS):
        ours = {n.removeprefix("image_encoder."): g for n, g in grads[k].items()}
        assert set(ours) == set(record[k]["grads"])
        flat_ours = torch.cat([ours[n].flatten() for n in sorted(ours)])
        flat_twin = torch.cat([record[k]["grads"][n].flatten() for n in sorted(ours)])
        assert rel(flat_twin, flat_ours) < 1e-3, k
    # the projection and the ω hypergradient really acted (ω moved off its start for some tensors)
    twin_omega = record[-1]["omega"]
    moved = [n for n, w in omegas.items() if abs(w - 0.5) > 1e-3]
    assert moved
    for n, w in omegas.items():
        assert twin_omega[n.removeprefix("image_encoder.")] == pytest.approx(w, abs=1e-6)


def _peft_to_twin(name: str) -> str:
    return name.replace(".default", "").replace(".base_layer", ".base")


def test_grace_twin_is_graces_step(tiny_open_clip_dir):
    ds = dataset()
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    torch.manual_seed(0)
    cfg = dict(lora_r=8, attack_steps=3, merge_lora_at_end=False)
    # the toolkit's initial adapters (PEFT's init under `seed`), read before training
    from vlmrobust.trainers import METHODS

    probe_model = create_model(f"local-dir:{tiny_open_clip_dir}")
    m = METHODS.get("grace")
    probe = m.trainer_class(probe_model, m.config_class(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to="none",
                                                        seed=0, **cfg), train_dataset=ds, **m.trainer_kwargs(ds))
    init = {_peft_to_twin(n): p.detach().clone() for n, p in probe.model.named_parameters() if ".lora_" in n}
    losses, grads, batches, trainer = run_toolkit("grace", model, ds, **cfg)

    def copy_init(layers):
        twin = dict(twin_model.image_encoder.named_parameters())
        with torch.no_grad():
            for n, v in init.items():
                twin[n].copy_(v)

    twin_model = create_model(f"local-dir:{tiny_open_clip_dir}")
    record = []
    step = pm.grace_plain_step(twin_model, torch.device("cpu"), ds.classnames, lora_r=8, attack_steps=3,
                               random_start=False, record=record, lora_init=copy_init)
    assert {n for n, _ in step.params} == set(init)
    twin_losses = [float(step(x, y)) for x, y in batches]
    assert twin_losses == pytest.approx(losses, rel=1e-4)
    for k in range(STEPS):
        ours = {_peft_to_twin(n): g for n, g in grads[k].items()}
        assert set(ours) == set(record[k]["grads"])
        names = sorted(ours)
        flat_ours = torch.cat([ours[n].flatten() for n in names])
        flat_twin = torch.cat([record[k]["grads"][n].flatten() for n in names])
        assert rel(flat_twin, flat_ours) < 1e-3, k
    # the weight perturbation was on (ranks 4 / 2 / 0 over the MLP layers) and the second pass contributed
    assert sorted(set(record[0]["ranks"].values())) == [0, 2, 4]
    assert sorted(trainer.awp.ranks.values()) == sorted(record[0]["ranks"].values())
