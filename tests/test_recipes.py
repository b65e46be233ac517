"""End-to-end recipe runs on a quickly pre-trained tiny digits CLIP (the quickstart path, shortened)."""

import json
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from report_tables import pct_ci, tables

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

    from vlmrobust.cli import main as cli
    from vlmrobust.eval import load_results

    out = tmp_path / "fare"
    res = fare_clip.main(_short(digits_clip, out))
    for name in ("results.json", "report.md", "acc_vs_eps_digits.png", "open_clip_model.safetensors", "README.md",
                 "open_clip_config.json", "vlmrobust_config.json", "suite.yaml"):
        assert (out / name).is_file(), name
    # one results format: the suite runner's cells and suite, plus the recipe's run section naming its rows
    data = load_results(out)
    run = data["run"]
    assert run["rows"] == ["before", "after"] and run["method"] == "fare" and run["config"]["epsilon"] > 0
    assert set(data["models"]) == {"before", "after"} and run["train_metrics"]["train_loss"] > 0
    assert res["after"]["robust_accuracy"].keys() == {"0.0156863", "0.0313725"}
    report = (out / "report.md").read_text()
    assert "ε=8/255" in report and report.startswith("# FARE on")
    card = (out / "README.md").read_text()
    assert "library_name: open_clip" in card and "| after |" in card and "create_model_and_transforms" in card
    # issue 20: one protocol, through the suite runner; every number of the recipe's table (and of the model card)
    # is the runner's cell for that row and ε, with the attacks and the logit scale named
    for text in (report, card):
        assert "APGD-CE and APGD-T" in text
        header, rows = next((h, r) for h, r in tables(text) if h[:2] == ["model", "logit scale"])
        assert [r[0] for r in rows] == ["before", "after"]
        for row in rows:
            name = row[0]
            clean = data["cells"][f"{name}|digits|clean"]
            assert res[name]["attacks"] == ["apgd-ce", "apgd-t"]
            assert row[1] == f"{clean['logit_scale']:.3g}" and row[2] == pct_ci(clean["accuracy"], clean["n"])
            for col, eps in (("ε=4/255", "0.0156863"), ("ε=8/255", "0.0313725")):
                cell = data["cells"][f"{name}|digits|apgd-ce+apgd-t|Linf|{eps}"]
                assert cell["components"] == ["apgd-ce", "apgd-t"] and cell["steps"] == 10
                assert row[header.index(col)] == pct_ci(cell["accuracy"], cell["n"]), (name, col)
    # `vlmrobust report <output_dir>` renders the recipe's file: the same report, run header included
    (out / "report.md").unlink()
    assert cli(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report
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


QUICKSTART = {"tecoa_clip": "quickstart_tecoa.yaml", "adv_clip": "quickstart_trades.yaml",
              "digrap_clip": "quickstart_digrap.yaml"}


@pytest.mark.parametrize("recipe,extra", [
    ("tecoa_clip", []), ("adv_clip", ["--loss", "trades"]), ("adv_clip", ["--loss", "classic", "--protocol", "lp"]),
    ("digrap_clip", []), ("digrap_clip", ["--lora_r", "2", "--weight_space", "ftp", "--adversarial", "true"]),
    ("digrap_clip", ["--weight_space", "none", "--train_head", "true", "--lp_steps", "3"]),  # LP-FT: a classifier
])
def test_other_recipes_run_on_quickstart_data(digits_clip, tmp_path, recipe, extra):
    mod = __import__(recipe)
    cfg = QUICKSTART[recipe]
    argv = _short(digits_clip, tmp_path, "--max_steps", "4", "--eval_before", "false", *extra)
    argv[1] = str(ROOT / "recipes/configs" / cfg)
    res = mod.main(argv)
    assert 0 <= res["after"]["clean_accuracy"] <= 1
    assert (tmp_path / "results.json").is_file()


def test_grace_recipe_merges_lora_and_reports_the_tradeoff(digits_clip, tmp_path):
    """GRACE through its recipe: a plain open_clip checkpoint, and the ID / OOD (corruptions) / adversarial table with
    the harmonic mean in report.md."""
    import grace_clip

    argv = _short(digits_clip, tmp_path, "--max_steps", "3", "--eval_before", "false", "--lora_r", "4",
                  "--eval_corruptions", "all", "--eval_corruption_severities", "1", "--eval_corruption_samples", "8")
    argv[1] = str(ROOT / "recipes/configs/quickstart_grace.yaml")
    res = grace_clip.main(argv)
    assert 0 <= res["after"]["clean_accuracy"] <= 1
    sd = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")[0].state_dict()
    assert not any("lora_" in k or "base_layer" in k for k in sd)
    report = (tmp_path / "report.md").read_text()
    assert "OOD (corruptions)" in report and "harmonic mean 8/255" in report


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
    n, steps, grid = 120, 20, [2 / 255, 4 / 255]
    argv = ["--config", str(ROOT / "recipes/configs" / cfg), "--model_name_or_path", f"local-dir:{digits_clip}",
            "--output_dir", str(tmp_path), "--max_steps", "60", "--save_strategy", "no", "--logging_steps", "30",
            "--eval_before", "false", "--eval_max_samples", str(n), "--eval_attack_steps", str(steps),
            "--eval_epsilons", "2/255", "4/255", "--disable_tqdm", "true"]
    res = __import__(recipe).main(argv)
    reported = {e: res["after"]["robust_accuracy"][f"{e:.6g}"] for e in grid}
    assert res["after"]["attacks"] == ["apgd-ce", "apgd-t"] and res["after"]["logit_scale"] > 0
    data = load_classification_dataset("digits", "test", image_size=16, max_samples=n, seed=0, templates="digits")
    clf = evaluated["after"].zero_shot_classifier(data.classnames, data.templates)
    assert res["after"]["logit_scale"] == pytest.approx(clf.logit_scale, rel=1e-3)
    kw = dict(steps=steps, seed=0, batch_size=n, progress=False)
    ce100 = evaluate_robust_accuracy(_Rescaled(clf, 100.0), data, grid, attack="apgd-ce", **kw).robust_accuracy
    apgd_t = evaluate_robust_accuracy(clf, data, grid, attack="apgd-t", attack_kwargs={"n_target_classes": 9},
                                      **kw).robust_accuracy
    print(f"{recipe} (logit scale {clf.logit_scale:.3g}): reported {reported}, APGD-CE at 100 {ce100}, APGD-T {apgd_t}")
    assert max(reported.values()) > 0.1, "need a partly robust model for the check to mean something"
    tol = 2 / n  # different random starts: the protocol's APGD-T runs on fewer points per batch than APGD-T alone
    for e in grid:
        assert reported[e] <= ce100[e] + tol, (e, reported[e], ce100[e])
        assert reported[e] <= apgd_t[e] + tol, (e, reported[e], apgd_t[e])


def test_recipe_suite_is_the_worst_case_protocol_and_names_bad_attacks():
    from vlmrobust.eval import load_suite
    from vlmrobust.script_utils import recipe_suite

    s = load_suite(recipe_suite(ScriptArguments(eval_epsilons=[4 / 255, 2 / 255], eval_max_samples=10), seed=3))
    d = s.datasets[0]
    (a,) = d.attacks
    assert (d.source, d.split, d.n_samples, d.seed, d.templates) == ("digits", "test", 10, 3, None)
    assert a.components == ("apgd-ce", "apgd-t") and a.options == {"apgd-t": {"n_target_classes": 9}}
    assert a.eps == (2 / 255, 4 / 255) and (a.steps, a.seed) == (100, 3)
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['apgd-cee'\]"):
        recipe_suite(ScriptArguments(eval_attack="apgd-cee+apgd-t"))


def test_trained_classifier_refuses_other_classes(digits_clip):
    from vlmrobust.eval.protocol import TrainedClassifier
    from vlmrobust.models import create_model

    model = create_model(f"local-dir:{digits_clip}")
    head = model.zero_shot_classifier(["zero", "one"], ["a photo of the digit {}."])
    tc = TrainedClassifier(model, head, ["zero", "one"])
    assert tc.zero_shot_classifier(["zero", "one"], None) is head and tc.image_size == model.image_size
    with pytest.raises(ValueError, match="same classnames, same order"):
        tc.zero_shot_classifier(["one", "zero"], None)


def test_lvlm_recipe_evaluates_through_the_suite_runner(tmp_path, monkeypatch):
    """The LVLM recipe's before / after rows are the suite runner's cells on a generated VQA suite (results v2 with a
    run section), and that suite's protocol (every ε from the clean images, in the dataset's batches) gives
    `evaluate_vqa`'s numbers: the same attack calls on the same question batches."""
    import fare_llava

    import vlmrobust.attacks.vlm as vlm_attacks
    from vlmrobust.data.shapes_vqa import ShapesVQA
    from vlmrobust.eval import load_results
    from vlmrobust.eval.vqa import evaluate_vqa
    from vlmrobust.models import create_model

    calls, real = [], vlm_attacks.ensemble_attack

    def recording(model, pixels, questions, references, **kw):
        calls.append((kw["eps"], tuple(questions)))
        return real(model, pixels, questions, references, **kw)

    monkeypatch.setattr(vlm_attacks, "ensemble_attack", recording)

    out = tmp_path / "llava"
    fare_llava.main(["--config", str(ROOT / "recipes/configs/quickstart_llava.yaml"), "--output_dir", str(out),
                     "--sft_steps", "0", "--train_samples", "16", "--max_steps", "1", "--per_device_train_batch_size",
                     "4", "--attack_steps", "1", "--eval_samples", "12", "--eval_batch_size", "6",
                     "--eval_attack_steps", "2", "--eval_epsilons", "2/255", "8/255", "--eval_targets", "yes",
                     "--save_strategy", "no", "--disable_tqdm", "true"])
    data = load_results(out)
    assert data["run"]["rows"] == ["before", "after"] and data["run"]["method"] == "fare"
    (entry,) = data["suite"]["datasets"]
    assert entry["task"] == "vqa" and entry["seed"] == 10_000 and entry["attacks"][0]["nested_eps"] is False
    report = (out / "report.md").read_text()
    header, rows = next((h, r) for h, r in tables(report) if h[:2] == ["model", "n"])
    assert [r[0] for r in rows] == ["before", "after"]
    trained = create_model(f"llava:{out}")
    recipe_calls, calls[:] = list(calls), []
    ref = evaluate_vqa(trained, ShapesVQA(12, seed=10_000, transform=trained.preprocess), [2 / 255, 8 / 255], steps=2,
                       batch_size=6, answer_mode="rank", targets=("yes",), seed=0)
    assert len(calls) == 2 * 2 and sorted(recipe_calls[-len(calls):]) == sorted(calls)  # 2 batches × 2 ε, "after"
    cells = data["cells"]
    assert round(cells["after|shapes-vqa|clean"]["accuracy"], 4) == ref["clean"]
    for eps, key in ((2 / 255, "2/255"), (8 / 255, "8/255")):
        cell = cells[f"after|shapes-vqa|apgd-ensemble|Linf|{eps:.6g}"]
        assert round(cell["accuracy"], 4) == ref["robust"][key]
        assert rows[1][header.index(f"apgd-ensemble (Linf) ε={key}")] == pct_ci(cell["accuracy"], 12)
