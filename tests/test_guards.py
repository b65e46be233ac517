"""Bad inputs refused with the fix named, or recovered from: never a silent wrong result (issue 18).

One test (or more) per case: weightless folders, existing outputs, runs that trained too few steps, incomplete
checkpoints, changed threat models on resume, secrets on disk, bad results files, file modes and stale temp
folders, and bad CLI / YAML / safetensors inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vlmrobust.layout import OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME
from vlmrobust.models import create_model
from vlmrobust.trainers import FAREConfig, FARETrainer

ROOT = Path(__file__).resolve().parent.parent


def fare_args(out, cls=FAREConfig, **kw):
    base = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                warmup_steps=0, epsilon=4 / 255, attack_steps=1, attack_step_size=2 / 255, logging_steps=1,
                save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return cls(**base)


def fare(tiny_dir, dataset, out, **kw):
    return FARETrainer(create_model(f"local-dir:{tiny_dir}"), fare_args(out, **kw), train_dataset=dataset)


def _umask() -> int:
    from vlmrobust.utils.io import _umask as read

    return read()


# -- 1. a folder without the weights its layout needs --------------------------------------------------------------
def test_open_clip_folder_without_weights_is_refused(tiny_open_clip_dir, tmp_path):
    from vlmrobust.models.open_clip_backend import load_open_clip

    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(Path(tiny_open_clip_dir) / OPEN_CLIP_CONFIG_NAME, folder)
    with pytest.raises(FileNotFoundError, match=rf"{OPEN_CLIP_WEIGHTS_NAME}.*random"):
        create_model(f"local-dir:{folder}")
    with pytest.raises(FileNotFoundError, match=OPEN_CLIP_WEIGHTS_NAME):
        load_open_clip(f"local-dir:{folder}")


# -- 2. an existing output folder ----------------------------------------------------------------------------------
def test_training_into_an_existing_output_is_refused_unless_overwrite_or_resume(tiny_open_clip_dir, image_dataset,
                                                                                 tmp_path):
    out = tmp_path / "run"
    first = fare(tiny_open_clip_dir, image_dataset, out, max_steps=1, save_strategy="steps", save_steps=1)
    first.train()
    first.save_model(str(out))
    before = (out / OPEN_CLIP_WEIGHTS_NAME).read_bytes()
    with pytest.raises(FileExistsError, match=r"--overwrite_output_dir.*--resume_from_checkpoint"):
        fare(tiny_open_clip_dir, image_dataset, out, max_steps=1).train()
    assert (out / "checkpoint-1").is_dir() and (out / OPEN_CLIP_WEIGHTS_NAME).read_bytes() == before
    fare(tiny_open_clip_dir, image_dataset, out, max_steps=1, overwrite_output_dir=True).train()


def test_recipe_refuses_an_existing_output_before_evaluating(tiny_open_clip_dir, tmp_path):
    from vlmrobust.recipe_main import run_clip_recipe

    out = tmp_path / "run"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        run_clip_recipe("fare", ["--model_name_or_path", f"local-dir:{tiny_open_clip_dir}", "--output_dir", str(out),
                                 "--use_cpu", "true", "--max_steps", "1"])
    assert (out / "results.json").read_text() == "{}"


# -- 3. a run that trained fewer steps than asked -------------------------------------------------------------------
def test_max_steps_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"max_steps.*-1"):
        fare_args(tmp_path, max_steps=0)
    with pytest.raises(ValueError, match="num_train_epochs"):
        fare_args(tmp_path, max_steps=-1, num_train_epochs=0)


def test_a_loader_with_no_batch_is_refused(tiny_open_clip_dir, image_dataset, tmp_path):
    trainer = fare(tiny_open_clip_dir, image_dataset, tmp_path, per_device_train_batch_size=32,
                   dataloader_drop_last=True)
    with pytest.raises(ValueError, match=r"16 examples.*dataloader_drop_last"):
        trainer.train()


def test_a_run_that_stops_short_fails(tmp_path, capsys):
    from types import SimpleNamespace

    from vlmrobust.trainers.run_guards import check_steps_trained

    def run(done, asked, stop):
        return SimpleNamespace(state=SimpleNamespace(global_step=done, max_steps=asked),
                               control=SimpleNamespace(should_training_stop=stop),
                               args=SimpleNamespace(output_dir=str(tmp_path)))

    with pytest.raises(RuntimeError, match=r"after 2 of 3 optimizer steps"):
        check_steps_trained(run(2, 3, False))  # the loop ran out of data
    with pytest.raises(RuntimeError, match=r"after 0 of 3 optimizer steps"):
        check_steps_trained(run(0, 3, True))
    check_steps_trained(run(3, 3, True))
    check_steps_trained(run(1, 3, True))  # a callback (early stopping) asked for the stop: honoured, said
    assert "stopped by a callback after 1 of 3" in capsys.readouterr().out


# -- 4. resume takes the newest *complete* checkpoint --------------------------------------------------------------
def _two_checkpoints(tiny_dir, dataset, out):
    fare(tiny_dir, dataset, out, max_steps=2, save_strategy="steps", save_steps=1).train()
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    # a save killed half-way: weights written, trainer_state.json not yet
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-3")
    (out / "checkpoint-3" / "trainer_state.json").unlink()


def test_resume_true_takes_the_newest_complete_checkpoint(tiny_open_clip_dir, image_dataset, tmp_path):
    from vlmrobust.trainers.run_guards import newest_complete_checkpoint

    out = tmp_path / "run"
    _two_checkpoints(tiny_open_clip_dir, image_dataset, out)
    assert newest_complete_checkpoint(out) == str(out / "checkpoint-2")
    trainer = fare(tiny_open_clip_dir, image_dataset, out, max_steps=3, save_strategy="steps", save_steps=1)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 3 and (out / "checkpoint-3" / "trainer_state.json").is_file()


def test_resume_from_an_incomplete_checkpoint_names_the_complete_one(tiny_open_clip_dir, image_dataset, tmp_path):
    out = tmp_path / "run"
    _two_checkpoints(tiny_open_clip_dir, image_dataset, out)
    trainer = fare(tiny_open_clip_dir, image_dataset, out, max_steps=3)
    with pytest.raises(ValueError, match=r"checkpoint-3 is incomplete.*checkpoint-2"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-3"))


def test_recipe_resume_true_uses_the_newest_complete_checkpoint(tmp_path):
    from vlmrobust.recipe_main import _resolve_resume

    out = tmp_path / "run"
    for step, complete in ((2, True), (3, False)):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")

    class Args:
        output_dir, resume_from_checkpoint = str(out), "true"

    assert _resolve_resume(Args) == str(out / "checkpoint-2")


# -- 5. resume refuses a changed method / ε / attack -----------------------------------------------------------------
def test_resume_refuses_a_changed_threat_model_unless_told(tiny_open_clip_dir, image_dataset, tmp_path):
    out = tmp_path / "run"
    fare(tiny_open_clip_dir, image_dataset, out, max_steps=1, save_strategy="steps", save_steps=1).train()
    changed = fare(tiny_open_clip_dir, image_dataset, out, max_steps=2, epsilon=8 / 255, attack_steps=3)
    with pytest.raises(ValueError, match=r"epsilon: 4/255 -> 8/255; attack_steps: 1 -> 3.*--resume_allow_config_change"):
        changed.train(resume_from_checkpoint=True)
    told = fare(tiny_open_clip_dir, image_dataset, out, max_steps=2, epsilon=8 / 255,
                resume_allow_config_change=True)
    told.train(resume_from_checkpoint=True)
    assert told.state.global_step == 2


def test_resume_refuses_another_method(tiny_open_clip_dir, image_dataset, tmp_path):
    from vlmrobust.trainers import TeCoAConfig, TeCoATrainer

    out = tmp_path / "run"
    fare(tiny_open_clip_dir, image_dataset, out, max_steps=1, save_strategy="steps", save_steps=1).train()
    args = fare_args(out, TeCoAConfig, max_steps=2)
    trainer = TeCoATrainer(create_model(f"local-dir:{tiny_open_clip_dir}"), args, train_dataset=image_dataset,
                           classnames=image_dataset.classnames)
    with pytest.raises(ValueError, match=r"method: 'fare' .* 'tecoa'"):
        trainer.train(resume_from_checkpoint=True)


# -- 6. secrets never reach the disk ---------------------------------------------------------------------------------
def test_hub_token_is_written_nowhere(tiny_open_clip_dir, image_dataset, tmp_path):
    secret = "hf_SECRETtoken0123456789"
    out = tmp_path / "run"
    trainer = fare(tiny_open_clip_dir, image_dataset, out, max_steps=1, save_strategy="steps", save_steps=1,
                   hub_token=secret)
    trainer.train()
    trainer.save_model(str(out))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files)
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaks, f"hub_token written to {leaks}"
    assert trainer.args.hub_token == secret  # still there in memory, for pushing
    loaded = torch.load(out / "training_args.bin", weights_only=False)
    assert loaded.hub_token is None and loaded.epsilon == pytest.approx(4 / 255)


# -- 7. results files are validated -----------------------------------------------------------------------------------
def _store(out, resume=True):
    from vlmrobust.eval.results import Store

    return Store(out, {"name": "s"}, ["m"], resume, {})


def _valid_results():
    return {"format": "vlmrobust.results/v2", "vlmrobust_version": "0.1.0", "suite": {"name": "s"}, "models": ["m"],
            "meta": {}, "skipped": {}, "cells": {"m|d|clean": {"kind": "clean", "model": "m", "dataset": "d", "n": 4,
                                                             "accuracy": 0.75, "config": "abc"}}}


@pytest.mark.parametrize("text,why", [
    ("{not json", "not valid JSON"),
    ('{"format": "vlmrobust.results/v2", "cells": []}', "cells"),
])
def test_unreadable_results_are_moved_aside_and_named(tmp_path, caplog, text, why):
    (tmp_path / "results.json").write_text(text)
    with caplog.at_level("WARNING"):
        store = _store(tmp_path)
    corrupt = tmp_path / "results.json.corrupt"
    assert corrupt.read_text() == text and store.cells == {}
    assert str(corrupt) in caplog.text and why in caplog.text


def test_out_of_range_accuracy_is_refused(tmp_path, caplog):
    from vlmrobust.eval.results import ResultsFormatError, load_results

    data = _valid_results()
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert _store(tmp_path).cells  # a valid file is reused
    data["cells"]["m|d|clean"]["accuracy"] = 7.5
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ResultsFormatError, match=r"m\|d\|clean.*accuracy 7.5.*\[0, 1\]"):
        load_results(tmp_path)
    with caplog.at_level("WARNING"):
        store = _store(tmp_path)
    assert store.cells == {} and (tmp_path / "results.json.corrupt").is_file()


def test_report_names_a_malformed_results_file(tmp_path):
    from vlmrobust.cli import main

    (tmp_path / "results.json").write_text("[1, 2")
    with pytest.raises(SystemExit, match=r"results.json is not valid JSON"):
        main(["report", str(tmp_path)])


# -- 8. file modes, temp folders ---------------------------------------------------------------------------------------
def test_saved_files_and_folders_get_the_umask_modes(tiny_open_clip_dir, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    out = tmp_path / "saved"
    model.save_pretrained(out)
    want = 0o666 & ~_umask()
    for name in (OPEN_CLIP_WEIGHTS_NAME, OPEN_CLIP_CONFIG_NAME):
        assert stat.S_IMODE((out / name).stat().st_mode) == want, name


def test_hf_layout_weights_get_the_umask_modes(tiny_hf_clip_dir, image_dataset, tmp_path):
    trainer = FARETrainer(create_model(f"hf-clip:{tiny_hf_clip_dir}"), fare_args(tmp_path / "r", max_steps=1),
                          train_dataset=image_dataset)
    trainer.train()
    trainer.save_model(str(tmp_path / "r"))
    want = 0o666 & ~_umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert modes["model.safetensors"] == want and all(m == want for m in modes.values()), modes


def test_stand_in_cache_folder_mode_and_stale_temp_folders(tmp_path, monkeypatch):
    from vlmrobust.testing import stand_in

    monkeypatch.setenv("VLMROBUST_CACHE", str(tmp_path))
    stale = tmp_path / f".{stand_in.TINY_DIGITS_NAME}-{stand_in.TINY_DIGITS_VERSION}.999999999.abc"
    stale.mkdir()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    path = stand_in.get_tiny_digits_clip(progress=False, steps=2, batch_size=8)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~_umask()
    assert not stale.exists()


@pytest.mark.slow
def test_sigterm_while_building_the_stand_in_leaves_no_temp_folder(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from vlmrobust.testing import stand_in
        def slow(out, **kw):
            print("building", flush=True)
            time.sleep(60)
        stand_in.pretrain_tiny_digits_clip = slow
        stand_in.get_tiny_digits_clip(progress=False)
    """)
    env = {**os.environ, "VLMROBUST_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "building"
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp folder exists while building
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


# -- 9. bad CLI values, empty YAML, corrupt safetensors -------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--batch-size", "--n-samples"])
def test_eval_refuses_non_positive_counts(flag, tmp_path, capsys):
    from vlmrobust.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "vlmrobust:tiny-digits-clip", "--suite", "digits", "--output", str(tmp_path),
              flag, "0"])
    assert exc.value.code == 2
    assert f"{flag}: must be a positive integer, got 0" in capsys.readouterr().err


def test_empty_yaml_config_is_refused(tmp_path):
    from vlmrobust.script_utils import RecipeParser, ScriptArguments

    cfg = tmp_path / "empty.yaml"
    cfg.write_text("# nothing here\n")
    with pytest.raises(ValueError, match=r"empty.yaml is empty"):
        RecipeParser((ScriptArguments, FAREConfig)).parse_args_and_config(["--config", str(cfg)])


def test_corrupt_safetensors_names_the_file(tiny_open_clip_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_open_clip_dir, folder)
    weights = folder / OPEN_CLIP_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"{weights}.*corrupt or truncated"):
        create_model(f"local-dir:{folder}")


# -- NaN / Inf in the loss or gradients ---------------------------------------------------------------------------
class NaNAtStep(FARETrainer):
    """FARE whose loss is NaN at the optimizer steps in `nan_steps` (1-based)."""

    nan_steps = ()

    def compute_loss(self, model, inputs, **kw):
        loss = super().compute_loss(model, inputs, **kw)
        return loss * float("nan") if self.state.global_step + 1 in self.nan_steps else loss


def test_nan_loss_stops_the_run_naming_the_step_and_last_good_checkpoint(tiny_open_clip_dir, image_dataset,
                                                                           tmp_path):
    out = tmp_path / "run"
    trainer = NaNAtStep(create_model(f"local-dir:{tiny_open_clip_dir}"),
                        fare_args(out, max_steps=3, save_strategy="steps", save_steps=1), train_dataset=image_dataset)
    trainer.nan_steps = (2,)
    with pytest.raises(FloatingPointError, match=rf"optimizer step 2.*{out / 'checkpoint-1'}.*--nonfinite_loss skip"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the NaN step never reached a weight


class _GradOf(torch.autograd.Function):
    """0 in the forward; in the backward, a gradient of `value` on every element of `p`."""

    @staticmethod
    def forward(ctx, p, value):
        ctx.shape, ctx.value = p.shape, value
        return p.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, ctx.value, dtype=grad.dtype, device=grad.device), None


class NaNGradAtStep(FARETrainer):
    """FARE whose loss is finite but one weight's gradient is `value` (NaN, Inf, huge) at the steps in `bad_steps`."""

    bad_steps, value = (), float("nan")

    def compute_loss(self, model, inputs, **kw):
        loss = super().compute_loss(model, inputs, **kw)
        if self.state.global_step + 1 in self.bad_steps:
            loss = loss + _GradOf.apply(next(q for q in model.parameters() if q.requires_grad), self.value)
        return loss


@pytest.mark.parametrize("nonfinite_loss", ["stop", "skip"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_gradient_with_a_finite_loss_is_caught(tiny_open_clip_dir, image_dataset, tmp_path, value,
                                                         nonfinite_loss):
    # stop mode checks the gradients on the norm the Trainer computes for clipping anyway; skip mode before the
    # weight-space transforms: either way the bad gradient never reaches a weight
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    trainer = NaNGradAtStep(model, fare_args(tmp_path / "run", max_steps=1, nonfinite_loss=nonfinite_loss),
                            train_dataset=image_dataset)
    trainer.bad_steps, trainer.value = (1,), value
    if nonfinite_loss == "stop":
        with pytest.raises(FloatingPointError, match="optimizer step 1"):
            trainer.train()
    else:
        trainer.train()
        assert trainer.skipped_steps == [1]
    for k, v in model.image_encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_norm_that_overflows_on_finite_gradients_is_not_a_bad_step(tiny_open_clip_dir, image_dataset, tmp_path):
    # 1e30 everywhere: the gradients are finite but the sum of their squares overflows fp32 to inf; the element-wise
    # confirmation lets the step through (clipping then scales it to 0, as the Trainer does)
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    trainer = NaNGradAtStep(model, fare_args(tmp_path / "run", max_steps=1), train_dataset=image_dataset)
    trainer.bad_steps, trainer.value = (1,), 1e30
    trainer.train()
    assert trainer.state.global_step == 1 and all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_loss_skip_mode_skips_the_step(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    trainer = NaNAtStep(model, fare_args(tmp_path, max_steps=1, nonfinite_loss="skip"), train_dataset=image_dataset)
    trainer.nan_steps = (1,)
    trainer.train()
    assert trainer.skipped_steps == [1] and trainer.state.global_step == 1
    for k, v in model.image_encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        fare_args(tmp_path, nonfinite_loss="ignore")


def test_an_attack_that_returns_nan_never_counts_a_point_as_robust(monkeypatch):
    from types import SimpleNamespace

    from vlmrobust.eval import zero_shot

    class Constant(torch.nn.Module):  # predicts class 0 for every image; NaN in, NaN logits out
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))

        def forward(self, x):
            return x.flatten(1).mean(1, keepdim=True) * 0 + self.w

    class NaNAttack:
        def __init__(self, *a, **kw):
            pass

        def perturb(self, x, y):
            x_adv = x.clone()
            x_adv[0] = float("nan")
            return SimpleNamespace(x_adv=x_adv)

    monkeypatch.setattr(zero_shot, "build_attack", NaNAttack)
    data = [{"pixel_values": torch.full((3, 4, 4), 0.5), "labels": 0} for _ in range(3)]
    survived, broken = zero_shot.attack_survivors(Constant(), data, [0, 1, 2], 4 / 255, attacks=["apgd-ce"],
                                                  device="cpu")
    assert survived.tolist() == [False, True, True] and broken == {"apgd-ce": 1}


# -- unreadable images -------------------------------------------------------------------------------------------------
def _folder_with_a_corrupt_image(root: Path) -> Path:
    from PIL import Image

    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(root / cls / f"{i}.png")
    (root / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_an_unreadable_image_fails_naming_the_file_or_is_skipped_and_counted(tmp_path):
    import datasets

    from vlmrobust.data.classification import build_classification_dataset, default_image_transform
    from vlmrobust.trainers.base_trainer import image_collator

    root = _folder_with_a_corrupt_image(tmp_path / "imgs")
    rows = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    ds = build_classification_dataset(rows, name=f"imagefolder:{root}", split="train",
                                      transform=default_image_transform(8), templates="simple")
    bad = next(i for i in range(len(ds)) if ds.data.cast_column("image", datasets.Image(decode=False))[i]["image"]
               ["path"].endswith("dog/1.png"))
    with pytest.raises(ValueError, match=rf"Unreadable image imagefolder:.* row {bad}, file .*dog/1.png.*'skip'"):
        ds[bad]
    ds.bad_images = "skip"
    items = [ds[i] for i in range(len(ds))]
    assert sum(not it for it in items) == 1 and ds.skipped == 1
    assert image_collator(items)["pixel_values"].shape[0] == len(ds) - 1


def _corrupt_folder_dataset(root: Path, image_size: int):
    import datasets

    from vlmrobust.data.classification import build_classification_dataset, default_image_transform

    _folder_with_a_corrupt_image(root)
    rows = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    return build_classification_dataset(rows, name=f"imagefolder:{root}", split="train",
                                        transform=default_image_transform(image_size), templates="simple")


def test_training_with_bad_images_skip_reports_the_skipped_file_and_fail_names_it(tiny_open_clip_dir, tmp_path,
                                                                                   capsys):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    ds = _corrupt_folder_dataset(tmp_path / "imgs", model.image_size)
    # fail (the default): the run stops at the unreadable image, naming its file
    with pytest.raises(ValueError, match=r"Unreadable image imagefolder:.*dog/1\.png"):
        fare(tiny_open_clip_dir, ds, tmp_path / "fail").train()
    # skip: 2 epochs over the 4 images (one unreadable) train on the other 3; the file is counted once, reported in
    # the training metrics, the trainer log and once on screen
    # (one DataLoader worker process: the names come back with the batches)
    trainer = FARETrainer(model, fare_args(tmp_path / "skip", bad_images="skip", dataloader_num_workers=1),
                          train_dataset=ds)
    capsys.readouterr()
    out = trainer.train()
    assert trainer.state.global_step == 2 and ds.bad_images == "skip"
    assert trainer.args.dataloader_num_workers == 1 and getattr(ds, "skipped", 0) == 0  # read in the worker
    assert out.metrics["skipped_images"] == 1
    (name,) = out.metrics["skipped_image_files"]
    assert name.endswith("dog/1.png") and "imagefolder:" in name
    assert trainer.state.log_history[-1]["skipped_images"] == 1
    printed = capsys.readouterr().out
    assert printed.count("unreadable training image(s) skipped") == 1
    assert "bad_images='skip': 1 unreadable training image(s) skipped: imagefolder:" in printed


def test_skipped_images_survive_a_resume(tiny_open_clip_dir, tmp_path):
    from vlmrobust.trainers.base_trainer import SKIPPED_IMAGES_NAME

    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    ds = _corrupt_folder_dataset(tmp_path / "imgs", model.image_size)
    args = fare_args(tmp_path / "run", bad_images="skip", save_strategy="steps", save_steps=1)
    FARETrainer(model, args, train_dataset=ds).train()
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / SKIPPED_IMAGES_NAME).read_text())
    assert len(saved) == 1 and saved[0].endswith("dog/1.png")
    # resumed at the end: no batch is read again, the count comes from the checkpoint
    again = FARETrainer(create_model(f"local-dir:{tiny_open_clip_dir}"), args, train_dataset=ds)
    out = again.train(resume_from_checkpoint=True)
    assert out.metrics["skipped_images"] == 1 and out.metrics["skipped_image_files"] == saved


def test_bad_images_option_is_validated_and_parsed_from_the_command_line(tmp_path):
    from vlmrobust.script_utils import RecipeParser, ScriptArguments

    with pytest.raises(ValueError, match=r"bad_images must be 'fail' .* or 'skip' .* got 'ignore'"):
        fare_args(tmp_path, bad_images="ignore")
    assert fare_args(tmp_path).bad_images == "fail"
    parser = RecipeParser((ScriptArguments, FAREConfig))
    argv = ["--output_dir", str(tmp_path / "o"), "--use_cpu", "true", "--bad_images", "skip"]
    _, args = parser.parse_args_and_config(argv)
    assert args.bad_images == "skip"
    with pytest.raises(ValueError, match="bad_images must be"):
        parser.parse_args_and_config(argv[:-1] + ["skp"])


def test_bad_images_skip_on_a_dataset_that_cannot_skip_warns(tiny_open_clip_dir, image_dataset, tmp_path):
    with pytest.warns(UserWarning, match=r"bad_images='skip' has no effect on this training set"):
        fare(tiny_open_clip_dir, image_dataset, tmp_path, bad_images="skip")


def test_evaluation_never_drops_a_point_mid_run_naming_the_file(tmp_path):
    from vlmrobust.eval.zero_shot import _collate

    ds = _corrupt_folder_dataset(tmp_path / "imgs", 8)
    ds.bad_images = "skip"
    with pytest.raises(ValueError, match=r"Unreadable image imagefolder:.*dog/1\.png met during evaluation: an "
                                         r"evaluation never drops a point mid-run.*--bad-images skip"):
        _collate([ds[i] for i in range(len(ds))])


def _corrupt_suite(root: Path, **entry) -> dict:
    return {"name": "corrupt", "datasets": [{
        "name": "pets", "source": f"imagefolder:{root}", "split": "train", "templates": "simple", "batch_size": 4,
        "attacks": [{"attack": "apgd-ce", "eps": ["4/255"], "steps": 1}], **entry}]}


def test_eval_suite_bad_images_skip_leaves_the_file_out_and_records_it(tiny_open_clip_dir, tmp_path):
    from vlmrobust.eval import load_suite, run_suite
    from vlmrobust.eval.tasks.classification import unpack_mask

    root = tmp_path / "imgs"
    _folder_with_a_corrupt_image(root)
    model = f"local-dir:{tiny_open_clip_dir}"
    # fail (the default): stops at the unreadable image, naming it
    with pytest.raises(ValueError, match=r"Unreadable image imagefolder:.*dog/1\.png"):
        run_suite([model], load_suite(_corrupt_suite(root)), tmp_path / "fail", device="cpu", progress=False)
    res = run_suite([model], load_suite(_corrupt_suite(root, bad_images="skip")), tmp_path / "skip", device="cpu",
                    progress=False)
    cells = [c for c in res["cells"].values() if c["dataset"] == "pets"]
    assert {c["kind"] for c in cells} == {"clean", "attack"}
    for c in cells:  # n counts the 3 readable images; each cell says how many were left out, and which
        assert c["n"] == 3 and c["skipped_images"] == 1 and c["skipped_image_files"][0].endswith("dog/1.png")
    clean = next(c for c in cells if c["kind"] == "clean")
    assert clean["accuracy"] == pytest.approx(unpack_mask(clean["correct"], 3).float().sum().item() / 3)
    # the CLI flag does the same for every classification dataset of the suite (and is part of the fingerprints)
    again = run_suite([model], load_suite(_corrupt_suite(root)), tmp_path / "skip", device="cpu", progress=False,
                      dataset_overrides={"bad_images": "skip"})
    assert again["last_run"] == {"computed_cells": 0, "reused_cells": 2}


def test_bad_images_eval_flag_and_suite_field_are_validated(tmp_path, capsys):
    from vlmrobust.cli import make_parser
    from vlmrobust.eval import SuiteError, load_suite, run_suite

    base = ["eval", "--model", "m", "--suite", "digits", "--output", str(tmp_path)]
    assert make_parser().parse_args(base).bad_images is None
    assert make_parser().parse_args([*base, "--bad-images", "skip"]).bad_images == "skip"
    with pytest.raises(SystemExit):
        make_parser().parse_args([*base, "--bad-images", "ignore"])
    assert "invalid choice: 'ignore'" in capsys.readouterr().err
    with pytest.raises(SuiteError, match=r"datasets\[0\]\.bad_images: must be 'fail' .* or 'skip' .* got 'ignore'"):
        load_suite(_corrupt_suite(tmp_path, bad_images="ignore"))
    with pytest.raises(ValueError, match="bad_images must be 'fail'"):
        run_suite(["m"], load_suite(_corrupt_suite(tmp_path)), tmp_path / "o", dataset_overrides={"bad_images": "ignore"})
    with pytest.raises(ValueError, match=r"No dataset of suite .* has the field\(s\) \['bad_image'\]"):
        run_suite(["m"], load_suite(_corrupt_suite(tmp_path)), tmp_path / "o", dataset_overrides={"bad_image": "skip"})


def test_clip_recipe_with_bad_images_skip_records_the_skipped_file_in_results_json(tiny_open_clip_dir, tmp_path,
                                                                                    capsys):
    import sys

    from PIL import Image

    sys.path.insert(0, str(ROOT / "recipes"))
    import fare_clip

    from vlmrobust.eval import load_results

    root = tmp_path / "data"
    _folder_with_a_corrupt_image(root / "train")
    for cls in ("cat", "dog"):  # the test split: 4 readable images and a corrupt one
        (root / "test" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (30 * i, 60, 90)).save(root / "test" / cls / f"{i}.png")
    (root / "test" / "cat" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "run"
    argv = ["--model_name_or_path", f"local-dir:{tiny_open_clip_dir}", "--dataset_name", f"imagefolder:{root}",
            "--templates", "simple", "--output_dir", str(out), "--use_cpu", "true", "--disable_tqdm", "true",
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "no",
            "--logging_steps", "1", "--attack_steps", "1", "--eval_before", "false", "--eval_max_samples", "8",
            "--eval_epsilons", "4/255", "--eval_attack", "apgd-ce", "--eval_attack_steps", "1",
            "--bad_images", "skip"]
    fare_clip.main(argv)
    results = load_results(out)
    metrics = results["run"]["train_metrics"]
    assert metrics["skipped_images"] == 1 and metrics["skipped_image_files"][0].endswith("dog/1.png")
    # the recipe's evaluation takes the same setting: the corrupt test image is left out before any cell
    for cell in results["cells"].values():
        assert cell["n"] == 4 and cell["skipped_images"] == 1, cell["kind"]
        assert cell["skipped_image_files"][0].endswith("cat/9.png")
    assert capsys.readouterr().out.count("unreadable training image(s) skipped") == 1
    with pytest.raises(ValueError, match=r"Unreadable image imagefolder:.*dog/1\.png"):
        fare_clip.main([*argv[:-1], "fail", "--overwrite_output_dir", "true"])
