"""Methods register themselves with their metadata; a new method is a config, a trainer and one registration, and
the CLIP recipe runs it with no other file touched."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlmrobust.attacks import ce_loss
from vlmrobust.recipe_main import run_clip_recipe
from vlmrobust.trainers import (
    METHODS,
    FAREConfig,
    FARETrainer,
    RobustTrainer,
    RobustTrainingArguments,
    load_config,
    register_method,
    resolve_method,
)

ROOT = Path(__file__).parent.parent


# -- a toy method, defined here and nowhere else -------------------------------------------------------------------
@dataclass
class ToyConfig(RobustTrainingArguments):
    """Adversarial CE against frozen class-name embeddings (a TeCoA in miniature)."""

    method: str = field(default="toy-test", metadata={"help": "Method name."})
    toy_scale: float = field(default=10.0, metadata={"help": "Logit scale."})


class ToyTrainer(RobustTrainer):
    built = []

    def __init__(self, model, args, classnames, **kwargs):
        self.classnames = list(classnames)
        self.text = model.class_embeddings(self.classnames, ["a photo of the number {}."]).detach()
        ToyTrainer.built.append(self)
        super().__init__(model, args, **kwargs)

    def logits(self, encoder, x):
        return self.args.toy_scale * F.normalize(encoder(x).float(), dim=-1) @ self.text.to(x.device).T

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        enc = self.unwrapped(model)
        x_adv = self.adversarial_examples(lambda z: self.logits(enc, z), x, y, ce_loss, module=enc)
        return F.cross_entropy(self.logits(model, x_adv), y)


@pytest.fixture
def methods(monkeypatch):
    """The registry, restored after the test (the toy method does not leak into other tests)."""
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    return METHODS


def _argv(model_dir, out):
    return ["--model_name_or_path", f"local-dir:{model_dir}", "--dataset_name", "digits", "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "8", "--max_train_samples", "16",
            "--learning_rate", "1e-3", "--attack_steps", "1", "--eval_before", "false", "--eval_after", "false",
            "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true", "--report_to", "none"]


def test_a_method_registered_from_its_own_module_runs_through_the_clip_recipe(methods, tiny_open_clip_dir, tmp_path):
    from safetensors.torch import load_file

    method = register_method("toy-test", ToyConfig, ToyTrainer, needs_classnames=True, paper="0000.00000")
    assert resolve_method("toy-test") is method and resolve_method(ToyConfig) is method
    for spec, out in (("toy-test", tmp_path / "by_name"), (ToyConfig, tmp_path / "by_config")):
        ToyTrainer.built.clear()
        run_clip_recipe(spec, _argv(tiny_open_clip_dir, out))
        (trainer,) = ToyTrainer.built
        assert trainer.classnames == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        assert trainer.state.global_step == 2
        cfg = load_config(out)  # the saved config loads back through the registry, as the toy's own class
        assert type(cfg) is ToyConfig and cfg.toy_scale == 10.0
        assert json.loads((out / "vlmrobust_config.json").read_text())["method"] == "toy-test"
        trained, init = (load_file(d / "open_clip_model.safetensors") for d in (out, tiny_open_clip_dir))
        assert any(not torch.equal(trained[k], init[k]) for k in init if k.startswith("visual."))


def test_duplicate_or_inconsistent_registration_fails_loudly(methods):
    with pytest.raises(ValueError, match="method 'fare' is already registered"):
        register_method("fare", FAREConfig, FARETrainer)
    with pytest.raises(ValueError, match="ToyConfig.method defaults to 'toy-test'"):
        register_method("toy-2", ToyConfig, ToyTrainer)
    with pytest.raises(TypeError, match="must subclass RobustTrainingArguments"):
        register_method("toy-3", dict, ToyTrainer)
    with pytest.raises(KeyError, match="Unknown method 'fair'. Known methods: adversarial, digrap, digrap_vqa, fare"):
        resolve_method("fair")


def test_shipped_methods_carry_their_metadata():
    expect = {"fare": (False, False, "2402.12336"), "tecoa": (True, False, "2212.07016"),
              "adversarial": (True, True, "2508.14079"), "radapt": (False, False, "2603.12799"),
              "grace": (True, False, "2603.27139")}
    # a method whose head trains only with some options decides per run (digrap: `train_head`)
    assert callable(METHODS.get("digrap").trains_classifier) and METHODS.get("digrap").paper == "2502.15895"
    for name, (classnames, classifier, paper) in expect.items():
        m = METHODS.get(name)
        assert (m.needs_classnames, m.trains_classifier, m.paper) == (classnames, classifier, paper), name
        assert m.config_class.__dataclass_fields__["method"].default == name
        assert m.recipe and (ROOT / m.recipe).is_file(), name
        assert "open_clip" in m.backends
    assert {"llava", "qwen_vl"} <= set(METHODS.get("fare").backends)
    assert "llava" not in METHODS.get("tecoa").backends
    # every trainer module of the package registers its method from there
    trainer_modules = {p.stem for p in (ROOT / "vlmrobust/trainers").glob("*_trainer.py")} - {"base_trainer"}
    assert trainer_modules == {METHODS.get(n).trainer_class.__module__.rsplit(".", 1)[1] for n in METHODS}


def test_recipes_carry_no_per_method_flags():
    for path in (ROOT / "recipes").glob("*.py"):
        text = path.read_text()
        assert "needs_classnames" not in text and "trains_classifier" not in text, path.name
        if "run_clip_recipe(" in text or "run_lvlm_fare_recipe(" in text:
            assert "Trainer" not in text.split('"""', 2)[-1], f"{path.name} names a trainer class"


def test_recipe_refuses_a_backend_the_method_does_not_train(methods):
    class FakeLVLM:
        backend = "llava"

    with pytest.raises(ValueError, match="'tecoa' trains open_clip, hf-clip models, not a 'llava' model"):
        METHODS.get("tecoa").check_backend(FakeLVLM())
