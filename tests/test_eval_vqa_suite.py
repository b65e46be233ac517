"""VQA datasets (`task: vqa`) in eval suites: schema, runner cells (clean / robust per ε), resume, report, CLI."""

from __future__ import annotations

import json

import pytest
from report_tables import check_report_against_results

from vlmrobust.eval import EVAL_TASKS, SuiteError, load_suite, run_suite
from vlmrobust.eval.runner import load_results


def _vqa_suite(**dataset) -> dict:
    base = {"name": "shapes", "task": "vqa", "source": "shapes-vqa", "n_samples": 10, "batch_size": 10,
            "vqa": {"answer_mode": "rank"},
            "attacks": [{"attack": "apgd", "eps": ["2/255", "8/255"], "steps": 2, "max_references": 1}]}
    return {"name": "tiny-vqa", "datasets": [{**base, **dataset}]}


# -- schema ---------------------------------------------------------------------------------------------------------
def test_shipped_shapes_vqa_suite_validates():
    suite = load_suite("shapes_vqa")
    (d,) = suite.datasets
    assert d.task == "vqa" and d.source == "shapes-vqa" and d.n_samples == 60
    assert d.vqa.answer_mode == "rank"
    (a,) = d.attacks
    assert a.components == ("apgd",) and a.ensemble and a.eps == (2 / 255, 8 / 255)
    assert EVAL_TASKS.get(d.task).data_config(d)["task"] == "vqa"


def test_classification_stays_default_and_vqa_defaults_do_not_leak():
    raw = _vqa_suite()
    raw["defaults"] = {"templates": "digits", "n_samples": 8,
                       "attacks": [{"attack": "apgd-ce", "eps": ["2/255"], "steps": 1}]}
    raw["datasets"].append({"name": "digits", "source": "digits", "templates": "digits"})
    suite = load_suite(raw)
    vqa, digits = suite.datasets
    assert digits.task == "classification" and digits.attacks[0].components == ("apgd-ce",)
    assert vqa.task == "vqa" and vqa.attacks[0].components == ("apgd",) and not hasattr(vqa, "templates")


@pytest.mark.parametrize("patch, field", [
    ({"vqa": {"answer_mode": "sample"}}, "datasets[0].vqa.answer_mode"),
    ({"vqa": {"answer_mod": "rank"}}, "datasets[0].vqa.answer_mod"),
    ({"task": "detection"}, "datasets[0].task"),
    ({"templates": "digits"}, "datasets[0].templates"),
    ({"attacks": [{"attack": "apgd-ce", "eps": ["2/255"]}]}, "datasets[0].attacks[0].attack"),
    ({"attacks": [{"attack": "apgd", "eps": ["2/255", 9]}]}, "datasets[0].attacks[0].eps[1]"),
    ({"attacks": [{"attack": "apgd", "eps": ["2/255"], "ensemble": "yes"}]}, "datasets[0].attacks[0].ensemble"),
    ({"attacks": [{"attack": "apgd", "eps": ["2/255"], "max_references": 0}]},
     "datasets[0].attacks[0].max_references"),
    ({"source": "vqa-json", "vqa": {"answer_mode": "generate"}}, "datasets[0].vqa.questions_file"),
    ({"source": "some/hub-vqa", "vqa": {"answer_mode": "rank"}}, "datasets[0].vqa.candidates"),
    ({"vqa": {"image_dir": "imgs"}}, "datasets[0].vqa.image_dir"),
    ({"n_samples": None}, "datasets[0].n_samples"),
])
def test_malformed_vqa_field_is_named(patch, field):
    with pytest.raises(SuiteError, match=rf"suite 'tiny-vqa': {__import__('re').escape(field)}:"):
        load_suite(_vqa_suite(**patch))


def test_vqa_field_on_classification_dataset_is_named():
    raw = {"name": "x", "datasets": [{"name": "digits", "source": "digits", "vqa": {"answer_mode": "rank"}}]}
    with pytest.raises(SuiteError, match=r"datasets\[0\]\.vqa: only for task: vqa"):
        load_suite(raw)


def test_vqa_json_and_hub_sources_validate():
    s = load_suite(_vqa_suite(source="vqa-json", vqa={"answer_mode": "generate", "questions_file": "q.json",
                                                      "annotations_file": "a.json", "image_dir": "val2014"}))
    assert s.datasets[0].vqa.questions_file == "q.json"
    s = load_suite(_vqa_suite(source="HuggingFaceM4/VQAv2", split="validation",
                              vqa={"answer_mode": "rank", "candidates": ["yes", "no"]}))
    assert s.datasets[0].vqa.candidates == ("yes", "no")


# -- runner ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava_tiny():
    from vlmrobust.models import create_model

    return create_model("llava:tiny")


def test_vqa_suite_runs_writes_cells_and_resumes(llava_tiny, tmp_path):
    suite = load_suite(_vqa_suite())
    res = run_suite({"llava:tiny": llava_tiny}, suite, tmp_path, device="cpu", progress=False)
    stored = load_results(tmp_path)
    cells = stored["cells"]
    clean = cells["llava:tiny|shapes|clean"]
    assert clean["kind"] == "vqa_clean" and clean["metric"] == "vqa_accuracy" and clean["n"] == 10
    assert 0.0 <= clean["accuracy"] <= 1.0 and len(clean["scores"]) == 10
    attacks = [c for c in cells.values() if c["kind"] == "vqa_attack"]
    assert sorted(c["eps"] for c in attacks) == [2 / 255, 8 / 255]
    prev = clean
    for c in sorted(attacks, key=lambda c: c["eps"]):  # robust <= clean, per question and across the ε grid
        assert c["accuracy"] <= prev["accuracy"]
        assert all(r <= p for r, p in zip(c["scores"], prev["scores"]))
        prev = c
    assert res["last_run"] == {"computed_cells": 3, "reused_cells": 0}
    row = res["summary"]["models"]["llava:tiny"]["vqa"]["shapes"]
    assert row["clean"] == pytest.approx(clean["accuracy"])
    assert set(row["robust"]["apgd-ensemble (Linf)"]) == {2 / 255, 8 / 255}
    report = (tmp_path / "report.md").read_text()
    assert "### VQA accuracy" in report and "apgd-ensemble (Linf) ε=8/255" in report
    assert check_report_against_results(report, stored, task="vqa") == 2 + 1 + 1  # 2 ε, 1 exp. rob., 1 row
    assert (tmp_path / "acc_vs_eps_shapes.png").is_file()

    again = run_suite({"llava:tiny": llava_tiny}, suite, tmp_path, device="cpu", progress=False)
    assert again["last_run"] == {"computed_cells": 0, "reused_cells": 3}
    assert again["cells"]["llava:tiny|shapes|clean"]["scores"] == clean["scores"]

    # a changed attack recomputes only its own cells
    changed = _vqa_suite()
    changed["datasets"][0]["attacks"][0]["steps"] = 3
    third = run_suite({"llava:tiny": llava_tiny}, load_suite(changed), tmp_path, device="cpu", progress=False)
    assert third["last_run"] == {"computed_cells": 2, "reused_cells": 1}
    check_report_against_results((tmp_path / "report.md").read_text(), load_results(tmp_path), task="vqa")


def test_vqa_dataset_on_a_clip_model_is_skipped_with_a_reason(tmp_path, tiny_open_clip_dir):
    from vlmrobust.eval.runner import DatasetUnavailable

    suite = load_suite(_vqa_suite(attacks=[]))
    with pytest.raises(DatasetUnavailable, match="not an LVLM"):
        run_suite([f"local-dir:{tiny_open_clip_dir}"], suite, tmp_path, device="cpu", progress=False)


def test_cli_eval_shapes_vqa(tmp_path, capsys):
    from vlmrobust.cli import main

    out = tmp_path / "out"
    assert main(["eval", "--model", "llava:tiny", "--suite", "shapes_vqa", "--output", str(out), "--n-samples", "10",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "shapes-vqa (VQA accuracy): clean" in text
    data = json.loads((out / "results.json").read_text())
    kinds = sorted(c["kind"] for c in data["cells"].values())
    assert kinds == ["vqa_attack", "vqa_attack", "vqa_clean"]
    assert "### VQA accuracy" in (out / "report.md").read_text()
    check_report_against_results((out / "report.md").read_text(), data, task="vqa")


def test_mixed_suite_skips_vqa_on_clip_with_skip_missing(tmp_path, tiny_open_clip_dir):
    raw = _vqa_suite(attacks=[])
    raw["datasets"].insert(0, {"name": "digits", "source": "digits", "templates": "digits", "n_samples": 8,
                               "batch_size": 8})
    model = f"local-dir:{tiny_open_clip_dir}"
    res = run_suite([model], load_suite(raw), tmp_path, device="cpu", progress=False, skip_missing=True)
    assert f"{model}|shapes" in res["skipped"] and "not an LVLM" in res["skipped"][f"{model}|shapes"]
    assert "digits" in res["summary"]["models"][model]["datasets"]
    assert "## Skipped datasets" in (tmp_path / "report.md").read_text()
