"""End-to-end recipe runs on a quickly pre-trained tiny digits CLIP (the quickstart path, shortened)."""

import json
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from vlmrobust.script_utils import RecipeParser, ScriptArguments
from vlmrobust.trainers import AdversarialConfig, FAREConfig

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "recipes"))


@pytest.fixture(scope="module")
def digits_clip(tmp_path_factory):
    from vlmrobust.testing import pretrain_tiny_digits_clip

    return pretrain_tiny_digits_clip(tmp_path_factory.mktemp("digits_clip"), steps=150, progress=False)


def _short(model_dir, out, *extra):
    return ["--config", str(ROOT / "recipes/configs/quickstart.yaml"), "--model_name_or_path", f"local-dir:{model_dir}",
            "--output_dir", str(out), "--max_steps", "12", "--save_steps", "6", "--logging_steps", "6",
            "--eval_max_samples", "48", "--eval_attack_steps", "10", "--eval_epsilons", "4/255", "8/255",
            "--disable_tqdm", "true", *extra]


def test_fare_recipe_end_to_end(digits_clip, tmp_path):
    import fare_clip

    out = tmp_path / "fare"
    res = fare_clip.main(_short(digits_clip, out))
    for name in ("results.json", "report.md", "accuracy_vs_eps.png", "open_clip_model.safetensors", "README.md",
                 "open_clip_config.json", "vlmrobust_config.json"):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    assert set(data["results"]) == {"before", "after"} and data["method"] == "fare"
    assert res["after"]["robust_accuracy"].keys() == {"0.0156863", "0.0313725"}
    assert "ε=8/255" in (out / "report.md").read_text()
    card = (out / "README.md").read_text()
    assert "library_name: open_clip" in card and "| after |" in card and "create_model_and_transforms" in card
    # the checkpoint the recipe wrote is a plain open_clip model whose vision tower was trained
    trained, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    orig, _, _ = open_clip.create_model_and_transforms(f"local-dir:{digits_clip}")
    assert not torch.equal(trained.visual.proj, orig.visual.proj)
    assert torch.equal(trained.text_projection, orig.text_projection)
    # resume: a second launch with more steps continues from the last checkpoint instead of starting over
    fare_clip.main(_short(digits_clip, out, "--max_steps", "18", "--resume_from_checkpoint", "true",
                          "--eval_before", "false"))
    state = json.loads((out / "checkpoint-18" / "trainer_state.json").read_text())
    assert state["global_step"] == 18
    assert [h["step"] for h in state["log_history"] if "loss" in h][0] == 6  # history carried over


@pytest.mark.parametrize("recipe,extra", [("tecoa_clip", []), ("adv_clip", ["--loss", "trades"]),
                                          ("adv_clip", ["--loss", "classic", "--protocol", "lp"])])
def test_other_recipes_run_on_quickstart_data(digits_clip, tmp_path, recipe, extra):
    mod = __import__(recipe)
    cfg = "quickstart_tecoa.yaml" if recipe == "tecoa_clip" else "quickstart_trades.yaml"
    argv = _short(digits_clip, tmp_path, "--max_steps", "4", "--eval_before", "false", *extra)
    argv[1] = str(ROOT / "recipes/configs" / cfg)
    res = mod.main(argv)
    assert 0 <= res["after"]["clean_accuracy"] <= 1
    assert (tmp_path / "results.json").is_file()


def test_parser_yaml_defaults_flag_overrides_and_fractions(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epsilon: 8/255\nmax_steps: 7\noutput_dir: o\nloss: trades\neval_epsilons: [2/255, 0.5]\n")
    parser = RecipeParser((ScriptArguments, AdversarialConfig))
    script, args = parser.parse_args_and_config(["--config", str(cfg), "--max_steps", "9", "--trades_beta", "3/2"])
    assert args.epsilon == pytest.approx(8 / 255) and args.max_steps == 9 and args.loss == "trades"
    assert args.trades_beta == pytest.approx(1.5)
    assert script.eval_epsilons == pytest.approx([2 / 255, 0.5])


def test_parser_rejects_unknown_keys_and_unit_mistakes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epsilonn: 8/255\noutput_dir: o\n")
    with pytest.raises(ValueError, match="epsilonn"):
        RecipeParser((ScriptArguments, FAREConfig)).parse_args_and_config(["--config", str(cfg)])
    with pytest.raises(ValueError, match="8/255"):
        RecipeParser((ScriptArguments, FAREConfig)).parse_args_and_config(["--output_dir", "o", "--epsilon", "8"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        RecipeParser((ScriptArguments, FAREConfig)).parse_args_and_config(["--config", "nope.yaml"])
