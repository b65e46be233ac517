"""End-to-end recipe runs on a quickly pre-trained tiny digits CLIP (the quickstart path, shortened)."""

import json
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from report_tables import tables

from vlmrobust.script_utils import RecipeParser, ScriptArguments
from vlmrobust.trainers import AdversarialConfig, FAREConfig

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "recipes"))


@pytest.fixture(scope="module")
def digits_clip(tmp_path_factory):
    from vlmrobust.models.tiny_digits import pretrain_tiny_digits_clip

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
    report = (out / "report.md").read_text()
    assert "ε=8/255" in report
    card = (out / "README.md").read_text()
    assert "library_name: open_clip" in card and "| after |" in card and "create_model_and_transforms" in card
    # issue 20: one protocol, through the suite runner; every number of the recipe's table (and of the model card)
    # is the runner's cell for that row and ε, with the attacks and the logit scale named
    suite_res = json.loads((out / "eval" / "results.json").read_text())
    assert (out / "eval" / "report.md").is_file() and (out / "eval" / "suite.yaml").is_file()
    for text in (report, card):
        assert "APGD-CE and APGD-T" in text
        header, rows = next((h, r) for h, r in tables(text) if h[:2] == ["model", "logit scale"])
        assert [r[0] for r in rows] == ["before", "after"]
        for row in rows:
            name = row[0]
            clean = suite_res["cells"][f"{name}|digits|clean"]
            assert data["results"][name]["attacks"] == ["apgd-ce", "apgd-t"]
            assert row[1] == f"{clean['logit_scale']:.3g}" and row[2] == f"{100 * clean['accuracy']:.1f}"
            for col, eps in (("ε=4/255", "0.0156863"), ("ε=8/255", "0.0313725")):
                cell = suite_res["cells"][f"{name}|digits|apgd-ce+apgd-t|Linf|{eps}"]
                assert cell["components"] == ["apgd-ce", "apgd-t"] and cell["steps"] == 10
                assert row[header.index(col)] == f"{100 * cell['accuracy']:.1f}", (name, col)
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


class _Rescaled(torch.nn.Module):
    """The same classifier at another logit scale (logits are linear in the scale)."""

    def __init__(self, clf, scale: float):
        super().__init__()
        self.clf, self.factor = clf, scale / clf.logit_scale
        self.logit_scale = scale

    def forward(self, x):
        return self.factor * self.clf(x)


@pytest.mark.parametrize("recipe,cfg", [("tecoa_clip", "quickstart_tecoa.yaml"), ("adv_clip", "quickstart_trades.yaml")])
def test_reported_robust_accuracy_is_not_above_apgd_t_or_apgd_ce_at_logit_scale_100(digits_clip, tmp_path, monkeypatch,
                                                                                    recipe, cfg):
    """Issue 20 guard: for quickstart-style trained tiny models whose loss trains against the logits (TeCoA: the
    zero-shot head at a low learned scale; TRADES: the trained cosine classifier), the robust accuracy the recipe
    reports is not above what APGD-T alone or APGD-CE at logit scale 100 alone find on the same points."""
    from vlmrobust.data import load_classification_dataset
    from vlmrobust.eval import evaluate_robust_accuracy
    from vlmrobust.eval.protocol import SuiteEvaluator

    evaluated = {}
    real = SuiteEvaluator.__call__

    def spy(self, name, model):
        evaluated[name] = model
        return real(self, name, model)

    monkeypatch.setattr(SuiteEvaluator, "__call__", spy)
    n, steps, eps = 120, 20, 8 / 255
    argv = ["--config", str(ROOT / "recipes/configs" / cfg), "--model_name_or_path", f"local-dir:{digits_clip}",
            "--output_dir", str(tmp_path), "--max_steps", "60", "--save_strategy", "no", "--logging_steps", "30",
            "--eval_before", "false", "--eval_max_samples", str(n), "--eval_attack_steps", str(steps),
            "--eval_epsilons", "8/255", "--disable_tqdm", "true"]
    res = __import__(recipe).main(argv)
    reported = res["after"]["robust_accuracy"]["0.0313725"]
    assert res["after"]["attacks"] == ["apgd-ce", "apgd-t"] and res["after"]["logit_scale"] > 0
    data = load_classification_dataset("digits", "test", image_size=16, max_samples=n, seed=0, templates="digits")
    clf = evaluated["after"].zero_shot_classifier(data.classnames, data.templates)
    assert res["after"]["logit_scale"] == pytest.approx(clf.logit_scale, rel=1e-3)
    kw = dict(steps=steps, seed=0, batch_size=n, progress=False)
    ce100 = evaluate_robust_accuracy(_Rescaled(clf, 100.0), data, [eps], attack="apgd-ce", **kw)
    apgd_t = evaluate_robust_accuracy(clf, data, [eps], attack="apgd-t", attack_kwargs={"n_target_classes": 9}, **kw)
    assert res["after"]["clean_accuracy"] == pytest.approx(ce100.clean_accuracy) and ce100.clean_accuracy > 0.5
    print(f"{recipe}: reported {reported:.3f}, APGD-CE at 100 {ce100.robust_accuracy[eps]:.3f}, APGD-T "
          f"{apgd_t.robust_accuracy[eps]:.3f}, logit scale {clf.logit_scale:.3g}")
    tol = 2 / n  # different random starts: the protocol's APGD-T runs on fewer points per batch than APGD-T alone
    assert reported <= ce100.robust_accuracy[eps] + tol, (reported, ce100.robust_accuracy[eps])
    assert reported <= apgd_t.robust_accuracy[eps] + tol, (reported, apgd_t.robust_accuracy[eps])
