"""Eval suites: schema errors, attack ordering, expected robustness, margins, corruptions, resume, CLI, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from report_tables import check_report_against_results, model_sections, tables
from torch import nn

from vlmrobust.data import load_classification_dataset
from vlmrobust.eval import (
    CorruptedDataset,
    SuiteError,
    attack_survivors,
    borda_ranking,
    estimate_robust_accuracy,
    evaluate_robust_accuracy,
    expected_robustness,
    input_margins,
    kendall_tau,
    load_suite,
    predict,
    run_suite,
)
from vlmrobust.eval.runner import load_results

EPS = 4 / 255


@pytest.fixture(scope="session")
def digits_clip_dir(tmp_path_factory):
    """A tiny CLIP briefly pre-trained on digits: accurate but not robust (about 5 s on one idle core)."""
    from vlmrobust.testing import pretrain_tiny_digits_clip

    return pretrain_tiny_digits_clip(tmp_path_factory.mktemp("digits_clip"), steps=100, batch_size=64,
                                     progress=False)


@pytest.fixture(scope="session")
def digits_clip(digits_clip_dir):
    from vlmrobust.models import create_model

    return create_model(f"local-dir:{digits_clip_dir}")


@pytest.fixture(scope="session")
def digits_test():
    return load_classification_dataset("digits", "test", image_size=16)


def _suite(**dataset) -> dict:
    base = {"name": "digits", "source": "digits", "templates": "digits", "n_samples": 48, "batch_size": 48,
            "attacks": [{"attack": "apgd-ce", "eps": ["2/255", "4/255"], "steps": 10}]}
    return {"name": "tiny", "datasets": [{**base, **dataset}]}


# -- schema ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"attacks": [{"attack": "apgd-xx", "eps": [0.01]}]}, "datasets[0].attacks[0].attack", "unknown attack"),
        ({"attacks": [{"attack": ["apgd-ce", "nope"], "eps": [0.01]}]}, "datasets[0].attacks[0].attack[1]",
         "unknown attack"),
        ({"attacks": [{"attack": "apgd-ce", "eps": ["4/255x"]}]}, "datasets[0].attacks[0].eps[0]", "fraction"),
        ({"attacks": [{"attack": "apgd-ce", "eps": [4]}]}, "datasets[0].attacks[0].eps[0]", "4/255"),
        ({"attacks": [{"attack": "apgd-ce", "eps": [75], "norm": "L1"}]}, "datasets[0].attacks[0].norm",
         "not implemented yet"),
        ({"attacks": [{"attack": "apgd-ce", "eps": [0.01], "stepz": 3}]}, "datasets[0].attacks[0].stepz",
         "did you mean 'steps'"),
        ({"n_sample": 3}, "datasets[0].n_sample", "did you mean 'n_samples'"),
        ({"corruptions": {"types": ["fogg"]}}, "datasets[0].corruptions.types[0]", "unknown corruption"),
        ({"margin": {"attack": "pgd"}}, "datasets[0].margin.attack", "not an attack label"),
        ({"templates": ["a photo"]}, "datasets[0].templates", "slot"),
    ],
)
def test_malformed_suite_names_the_field(patch, field, words):
    with pytest.raises(SuiteError) as err:
        load_suite(_suite(**patch))
    msg = str(err.value)
    assert msg.startswith("suite 'tiny': ") and f"{field}:" in msg and words in msg, msg


def test_suite_yaml_include_and_defs(tmp_path):
    (tmp_path / "common.yaml").write_text(
        "template_sets: {mine: ['a digit: {}.']}\n"
        "dataset_defs: {dig: {source: digits, templates: mine, split: test}}\n"
        "defaults: {n_samples: 10, attacks: [{attack: [apgd-ce, apgd-t], eps: [2/255, 1/255]}]}\n")
    (tmp_path / "s.yaml").write_text("include: [common.yaml]\ndatasets:\n  - {use: dig, n_samples: 20}\n")
    s = load_suite(tmp_path / "s.yaml")
    d = s.datasets[0]
    assert (s.name, d.name, d.n_samples, d.templates) == ("s", "dig", 20, ["a digit: {}."])
    assert d.attacks[0].label == "apgd-ce+apgd-t" and d.attacks[0].eps == (1 / 255, 2 / 255)
    (tmp_path / "bad.yaml").write_text("include: [common.yaml]\ndatasets: [{use: dig, seed: -1}]\n")
    with pytest.raises(SuiteError, match=r"suite 'bad': datasets\[0\]\.seed: must be >= 0"):
        load_suite(tmp_path / "bad.yaml")
    with pytest.raises(KeyError, match="Unknown eval suite 'nope'.*digits"):
        load_suite("nope")


def test_shipped_suites_validate():
    for name in ("digits", "fare13", "tecoa16", "imagenet_shift", "corruptions"):
        s = load_suite(name)
        assert s.datasets and all(d.attacks or d.analyses.get("corruptions") for d in s.datasets)
    fare = load_suite("fare13")
    assert len(fare.datasets) == 14 and fare.dataset("imagenet").n_samples == 5000
    assert {a.components for d in fare.datasets for a in d.attacks} == {("apgd-ce", "apgd-t")}


# -- attacks and metrics ----------------------------------------------------------------------------------------------


def test_attack_strength_ordering(digits_clip, digits_test):
    """AutoAttack (standard) <= APGD-CE <= PGD <= clean, same tiny model, seed and samples."""
    clf = digits_clip.zero_shot_classifier(digits_test.classnames, digits_test.templates)
    kw = dict(norm="Linf", n_samples=48, seed=0, batch_size=48, progress=False)
    pgd = evaluate_robust_accuracy(clf, digits_test, [EPS], attack="pgd", steps=10, **kw)
    apgd = evaluate_robust_accuracy(clf, digits_test, [EPS], attack="apgd-ce", steps=100, **kw)
    aa = evaluate_robust_accuracy(clf, digits_test, [EPS], attack="autoattack", steps=100,
                                  attack_kwargs={"n_classes": 10, "version": "standard"}, **kw)
    clean = pgd.clean_accuracy
    assert clean > 0.5, "the fixture model should be accurate"
    assert aa.robust_accuracy[EPS] <= apgd.robust_accuracy[EPS] <= pgd.robust_accuracy[EPS] <= clean
    # AutoAttack starts with the very same APGD-CE run: its survivors are a subset of APGD-CE's
    assert not (aa.robust_mask[EPS] & ~apgd.robust_mask[EPS]).any()
    assert apgd.robust_accuracy[EPS] < clean


def test_attack_survivors_worst_case_and_skips(digits_clip, digits_test):
    clf = digits_clip.zero_shot_classifier(digits_test.classnames, digits_test.templates)
    correct, _ = predict(clf, digits_test)
    idx = correct.nonzero().flatten()[:40].tolist()
    ce, _ = attack_survivors(clf, digits_test, idx, EPS, attacks=["apgd-ce"], steps=20)
    both, broken = attack_survivors(clf, digits_test, idx, EPS, attacks=["apgd-ce", "apgd-t"], steps=20,
                                    n_classes=10, attack_kwargs={"apgd-t": {"n_target_classes": 3}})
    assert not (both & ~ce).any() and broken["apgd-ce"] == int((~ce).sum())
    _, broken2 = attack_survivors(clf, digits_test, idx[:4], EPS, attacks=["apgd-ce", "apgd-t"], steps=2,
                                  n_classes=3)
    assert broken2["apgd-t"] == -1  # needs >= 4 classes: skipped and reported


def test_expected_robustness_is_mean_of_measured_grid(digits_clip_dir, tmp_path):
    res = run_suite([f"local-dir:{digits_clip_dir}"], load_suite(_suite()), tmp_path, progress=False)
    row = res["summary"]["models"][f"local-dir:{digits_clip_dir}"]["datasets"]["digits"]
    accs = [row["clean"], *row["robust"]["apgd-ce (Linf)"].values()]
    assert len(accs) == 3
    assert row["expected_robustness"]["apgd-ce (Linf)"] == pytest.approx(sum(accs) / 3, abs=1e-12)
    assert expected_robustness({0.0: 0.9, 0.1: 0.5}, {0.0: 1, 0.1: 3}) == pytest.approx(0.6)
    report = (tmp_path / "report.md").read_text()
    assert "exp. rob. apgd-ce (Linf)" in report and (tmp_path / "acc_vs_eps_digits.png").stat().st_size > 0


# -- margin consistency ------------------------------------------------------------------------------------------------


class _Linear(nn.Module):
    def __init__(self, d: int, k: int):
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x):
        return self.fc(x.flatten(1) - 0.5)


def test_margin_estimate_matches_attacked_robust_accuracy(digits_test):
    """On a small adversarially trained linear model the margin estimate from 120 attacked points is within 0.08 of
    the robust accuracy measured by attacking all 360 (the tolerance this suite states for tiny robust models)."""
    from vlmrobust.attacks import PGD
    from vlmrobust.data import load_digits_splits

    train, _ = load_digits_splits(image_size=8)
    test = load_classification_dataset("digits", "test", image_size=8)
    torch.manual_seed(0)
    model = _Linear(3 * 8 * 8, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    eps = 16 / 255
    g = torch.Generator().manual_seed(0)
    for step in range(150):
        i = torch.randint(len(train.images), (128,), generator=g)
        x, y = train.images[i], train.labels[i]
        x_adv = PGD(model, eps=eps, steps=5, alpha=eps / 2, seed=step)(x, y)
        loss = nn.functional.cross_entropy(model(x_adv), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    correct, margins = predict(model, test, batch_size=360)
    idx = correct.nonzero().flatten().tolist()
    survived, _ = attack_survivors(model, test, idx, eps, attacks=["apgd-ce"], steps=50, batch_size=360)
    robust = torch.zeros(len(correct), dtype=torch.bool)
    robust[idx] = survived
    assert 0.2 < robust.float().mean() < correct.float().mean(), "need a model that is partly robust"
    sub = torch.randperm(len(correct), generator=torch.Generator().manual_seed(1))[:120]
    est = estimate_robust_accuracy(margins, correct, sub, robust[sub])
    assert abs(est.estimate - robust.float().mean().item()) <= 0.08
    x = torch.stack([test[int(i)]["pixel_values"] for i in sub[:40]])
    y = torch.tensor([test[int(i)]["labels"] for i in sub[:40]])
    im = input_margins(model, x, y, steps=20, n_target_classes=3, max_norm=0.5)
    ok = correct[sub[:40]]
    tau, _ = kendall_tau(margins[sub[:40]][ok], im[ok])
    assert tau > 0.5, tau  # a linear model is margin-consistent
    assert (im[~ok] == 0).all()


# -- corruptions --------------------------------------------------------------------------------------------------------


def test_corruptions_are_deterministic_and_leave_numpy_rng_alone(digits_test):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for name in ("gaussian_noise", "glass_blur", "impulse_noise", "frost", "zoom_blur"):
        a = CorruptedDataset(digits_test, name, 3, seed=7, indices=[0, 5, 9])
        b = CorruptedDataset(digits_test, name, 3, seed=7, indices=[9, 5, 0])
        x0, x9 = a[0]["pixel_values"], a[2]["pixel_values"]
        assert x0.shape == (3, 16, 16) and 0 <= x0.min() and x0.max() <= 1
        assert torch.equal(x0, b[2]["pixel_values"]) and torch.equal(x9, b[0]["pixel_values"]), name
    c = CorruptedDataset(digits_test, "gaussian_noise", 3, seed=8, indices=[0])
    assert not torch.equal(c[0]["pixel_values"], CorruptedDataset(digits_test, "gaussian_noise", 3, seed=7,
                                                                  indices=[0])[0]["pixel_values"])
    assert (np.random.get_state()[1] == before).all()


def test_corruption_errors_mce():
    from vlmrobust.eval.corruptions import ALEXNET_IMAGENET_C_ERRORS, corruption_errors

    acc = {"gaussian_noise": {s: 0.5 for s in range(1, 6)}, "saturate": {1: 0.9}}
    out = corruption_errors(acc, ALEXNET_IMAGENET_C_ERRORS)
    assert out["mce"] == pytest.approx(0.5 / 0.886428, rel=1e-5) and out["mce_types"] == ["gaussian_noise"]
    assert corruption_errors(acc)["mce"] is None


# -- runner: resume, several models, Borda ----------------------------------------------------------------------------


def test_killed_run_resumes_only_missing_cells(digits_clip_dir, tiny_open_clip_dir, tmp_path, monkeypatch):
    import vlmrobust.eval.tasks.classification as zs

    suite = load_suite(_suite(corruptions={"types": ["gaussian_noise", "contrast"], "severities": [1, 5],
                                           "n_samples": 16}))
    models = [f"local-dir:{digits_clip_dir}", f"local-dir:{tiny_open_clip_dir}"]
    calls = []
    real = zs.attack_survivors

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(zs, "attack_survivors", counting)

    class Killed(Exception):
        pass

    def kill_after_first_attack(key, cell):
        if cell["kind"] == "attack":
            raise Killed(key)

    with pytest.raises(Killed):
        run_suite(models, suite, tmp_path, progress=False, on_cell=kill_after_first_attack)
    stored = load_results(tmp_path)["cells"]
    assert len(stored) == 2 and len(calls) == 1  # the clean cell and the first ε were written before the kill
    computed = []
    res = run_suite(models, suite, tmp_path, progress=False, on_cell=lambda k, c: computed.append(k))
    assert not set(computed) & set(stored)
    n_cells = 2 * (1 + 2 + 4)
    assert len(res["cells"]) == n_cells and len(computed) == n_cells - 2
    # a complete run recomputes nothing; --no-resume recomputes everything
    again = []
    run_suite(models, suite, tmp_path, progress=False, report=False, on_cell=lambda k, c: again.append(k))
    assert again == []
    summary = res["summary"]
    assert [b["place"] for b in summary["borda"]] == [1, 2]
    assert summary["borda"][0]["model"] == models[0]  # the trained model beats the random one
    assert (tmp_path / "model_comparison.png").is_file() and (tmp_path / "corruptions_digits.png").is_file()
    assert "Borda ranking" in (tmp_path / "report.md").read_text()


def test_changed_protocol_recomputes_only_affected_cells(digits_clip_dir, tmp_path):
    model = f"local-dir:{digits_clip_dir}"
    run_suite([model], load_suite(_suite()), tmp_path, progress=False, report=False)
    changed = _suite(attacks=[{"attack": "apgd-ce", "eps": ["2/255", "4/255"], "steps": 12}])
    computed = []
    run_suite([model], load_suite(changed), tmp_path, progress=False, report=False,
              on_cell=lambda k, c: computed.append(k))
    assert len(computed) == 2 and all("apgd-ce" in k for k in computed)


def test_report_shows_only_the_current_suite_grid(digits_clip_dir, tmp_path):
    """Issue 10 (5): an output folder reused after the suite changed keeps the old cells (for reuse) but the report
    and the summary show exactly the new grid: no column of a dropped ε / attack / dataset, expected robustness over
    the new grid."""
    model = f"local-dir:{digits_clip_dir}"
    wide = _suite(attacks=[{"attack": "apgd-ce", "eps": ["2/255", "4/255", "8/255"], "steps": 10},
                           {"attack": "apgd-ce", "label": "ce-l2", "norm": "L2", "eps": [0.25], "steps": 10}])
    wide["datasets"].append({**wide["datasets"][0], "name": "digits-b", "seed": 1})
    run_suite([model], load_suite(wide), tmp_path, progress=False)
    narrow = _suite()  # apgd-ce at 2/255 and 4/255 only, one dataset: everything is reused
    computed = []
    res = run_suite([model], load_suite(narrow), tmp_path, progress=False, on_cell=lambda k, c: computed.append(k))
    stored = load_results(tmp_path)
    assert computed == [] and len(stored["cells"]) == 2 * (1 + 3 + 1)  # old cells kept for reuse
    report = (tmp_path / "report.md").read_text()
    assert "8/255" not in report and "ce-l2" not in report and "digits-b" not in report
    check_report_against_results(report, stored)
    row = res["summary"]["models"][model]["datasets"]["digits"]
    assert set(res["summary"]["models"][model]["datasets"]) == {"digits"}
    assert set(row["robust"]) == {"apgd-ce (Linf)"} and set(row["robust"]["apgd-ce (Linf)"]) == {2 / 255, 4 / 255}
    accs = [stored["cells"][f"{model}|digits|clean"]["accuracy"]] + [
        stored["cells"][f"{model}|digits|apgd-ce|Linf|{e}"]["accuracy"] for e in ("0.00784314", "0.0156863")]
    assert row["expected_robustness"]["apgd-ce (Linf)"] == pytest.approx(sum(accs) / 3, abs=1e-12)
    # re-rendering the stored file gives the same report
    from vlmrobust.eval.report import write_suite_report

    write_suite_report(stored, tmp_path / "again")
    assert (tmp_path / "again" / "report.md").read_text() == report


def _fake_cells(suite, model: str, seed: int = 0) -> dict:
    """Cells of `suite` with random accuracies (what `run_suite` stores, minus masks): for report checks only."""
    rng = np.random.default_rng(seed)
    cells = {}
    for d in suite.datasets:
        n = d.n_samples
        clean = float(rng.integers(n // 2, n)) / n
        cells[f"{model}|{d.name}|clean"] = {"kind": "clean", "model": model, "dataset": d.name, "n": n,
                                            "accuracy": clean}
        for a in d.attacks:
            acc = clean
            for e in a.eps:
                acc = float(rng.integers(0, int(acc * n) + 1)) / n
                cells[f"{model}|{d.name}|{a.label}|{a.norm}|{e:.6g}"] = {
                    "kind": "attack", "model": model, "dataset": d.name, "attack": a.label,
                    "components": list(a.components), "norm": a.norm, "eps": e, "steps": a.steps, "seed": a.seed,
                    "n": n, "accuracy": acc}
    return cells


def test_fare13_average_is_over_the_13_zero_shot_datasets_imagenet_apart():
    """Issue 10 (6): the FARE paper's averages (and the anchors quoted in fare13.yaml) are over 13 zero-shot datasets
    without ImageNet: the report's average row is that, and ImageNet's row is given apart, labelled."""
    from vlmrobust.eval.report import suite_markdown, summarize_suite
    from vlmrobust.eval.results import FORMAT

    suite = load_suite("fare13")
    assert suite.average_exclude == ("imagenet",)
    model = "open_clip:ViT-L-14/openai"
    results = {"format": FORMAT, "suite": suite.to_dict(), "models": [model], "meta": {},
               "cells": _fake_cells(suite, model)}
    summary = summarize_suite(results)
    avg = summary["models"][model]["average"]
    thirteen = [d.name for d in suite.datasets if d.name != "imagenet"]
    assert avg["n_datasets"] == 13 and avg["datasets"] == thirteen and avg["apart"] == ["imagenet"]
    clean = [results["cells"][f"{model}|{d}|clean"]["accuracy"] for d in thirteen]
    assert avg["columns"]["clean"] == pytest.approx(np.mean(clean))
    report = suite_markdown(results, summary, {})
    assert check_report_against_results(report, results) == 14 * (2 + 1 + 1) + 4  # 2 ε, exp. rob., clean; avg
    header, rows = next((h, r) for h, r in tables(model_sections(report)[model]) if h[0] == "dataset")
    names = [r[0] for r in rows]
    assert names[13].startswith("**average of 13: 13 zero-shot datasets") and "without imagenet" in names[13]
    assert names[14] == "imagenet (apart, not in the average)" and len(names) == 15


def test_average_exclude_names_unknown_datasets():
    with pytest.raises(SuiteError, match=r"suite 'tiny': average\.exclude: no dataset 'digit' \(did you mean "
                                         r"'digits'\?\)"):
        load_suite({**_suite(), "average": {"exclude": ["digit"]}})


def test_borda_ranking_ties_and_common_columns():
    scores = {"a": {"d1": {"clean": 0.9, "rob": 0.5}, "d2": {"clean": 0.8}},
              "b": {"d1": {"clean": 0.9, "rob": 0.6}, "d2": {"clean": 0.7, "extra": 1.0}},
              "c": {"d1": {"clean": 0.1, "rob": 0.1}, "d2": {"clean": 0.9}}}
    ranks = {r["model"]: r for r in borda_ranking(scores)}
    assert ranks["a"]["borda"] == 1.5 + 2 + 2 and ranks["b"]["borda"] == 1.5 + 1 + 3
    assert ranks["c"]["borda"] == 3 + 3 + 1 and ranks["a"]["n_columns"] == 3
    assert [r["model"] for r in borda_ranking(scores)] == ["a", "b", "c"]


# -- CLI --------------------------------------------------------------------------------------------------------------


def test_cli_eval_digits_suite_and_report(digits_clip_dir, tmp_path, capsys):
    from vlmrobust.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", f"local-dir:{digits_clip_dir}", "--suite", "digits", "--output", str(out),
                 "--n-samples", "16", "--no-progress"]) == 0
    data = json.loads((out / "results.json").read_text())
    kinds = {c["kind"] for c in data["cells"].values()}
    assert kinds == {"clean", "attack", "corruption", "margin"}
    assert len(data["cells"]) == 1 + 3 + 2 + 19 * 3 + 1
    for f in ("report.md", "acc_vs_eps_digits.png", "corruptions_digits.png"):
        assert (out / f).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Margin consistency" in report and "Common corruptions" in report
    # every number of the accuracy table sits in the column of its cell: 3 Linf + 2 L2 budgets, 2 exp. rob., clean
    assert check_report_against_results(report, data) == 3 + 2 + 2 + 1
    re_out = tmp_path / "rerendered"
    assert main(["report", str(out / "results.json"), "--output", str(re_out)]) == 0
    assert (re_out / "report.md").read_text() == report
    assert main(["info"]) == 0
    info = capsys.readouterr().out
    assert "digits" in info and "apgd-ce" in info and "fare" in info


def _fake_wds(root, n=12, classes=("red car", "blue bird", "green tree")):
    """A local copy laid out like a clip-benchmark/wds_* repository (shards, nshards.txt, classnames.txt)."""
    import io
    import tarfile

    from PIL import Image

    (root / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(buf, format="png")
            for ext, blob in (("png", buf.getvalue()), ("cls", str(i % len(classes)).encode())):
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")


def test_webdataset_source_with_classnames_file_and_missing_data(tiny_open_clip_dir, tmp_path):
    from vlmrobust.eval import DatasetUnavailable

    _fake_wds(tmp_path / "wds")
    entry = {"name": "fake", "source": f"webdataset:{tmp_path / 'wds'}", "label_column": "cls",
             "classnames": {"file": "classnames.txt"}, "templates": {"file": "zeroshot_classification_templates.txt"},
             "n_samples": 8, "attacks": [{"attack": "apgd-ce", "eps": ["1/255"], "steps": 2}]}
    missing = {"name": "gone", "source": f"imagefolder:{tmp_path / 'nope'}", "download": "put it in ./nope"}
    suite = load_suite({"name": "w", "datasets": [entry, missing]})
    model = f"local-dir:{tiny_open_clip_dir}"
    with pytest.raises(DatasetUnavailable, match=r"dataset 'gone'.*does not exist.*To get it: put it in ./nope"):
        run_suite([model], suite, tmp_path / "out", progress=False)
    res = run_suite([model], suite, tmp_path / "out", progress=False, skip_missing=True)
    assert res["cells"][f"{model}|fake|clean"]["n"] == 8 and res["cells"][f"{model}|fake|clean"]["n_classes"] == 3
    assert f"{model}|gone" in res["skipped"]
    assert "Skipped datasets" in (tmp_path / "out" / "report.md").read_text()


def test_expected_robustness_weights_from_suite(digits_clip_dir, tmp_path):
    raw = {**_suite(), "expected_robustness": {"weights": {0: 2, "2/255": 1, "4/255": 1}}}
    res = run_suite([f"local-dir:{digits_clip_dir}"], load_suite(raw), tmp_path, progress=False)
    row = res["summary"]["models"][f"local-dir:{digits_clip_dir}"]["datasets"]["digits"]
    accs = row["robust"]["apgd-ce (Linf)"]
    want = (2 * row["clean"] + accs[2 / 255] + accs[4 / 255]) / 4
    assert row["expected_robustness"]["apgd-ce (Linf)"] == pytest.approx(want)
    with pytest.raises(SuiteError, match=r"expected_robustness\.weights: no weight for ε"):
        load_suite({**_suite(), "expected_robustness": {"weights": {0: 1, "2/255": 1}}})


def test_retrained_checkpoint_in_same_folder_does_not_reuse_stale_cells(tmp_path):
    import os

    from vlmrobust.eval.runner import weights_signature

    (tmp_path / "open_clip_model.safetensors").write_bytes(b"a" * 10)
    before = weights_signature(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"b" * 11)
    os.utime(tmp_path / "open_clip_model.safetensors", ns=(1, 10**18))
    assert before is not None and weights_signature(f"local-dir:{tmp_path}") != before
    assert weights_signature("open_clip:ViT-B-32/openai") is None
