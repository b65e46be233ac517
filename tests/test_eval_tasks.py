"""Eval tasks as registered objects: a task defined here (not in vlmrobust) is validated, run, resumed and reported
by the unchanged schema, runner and report; results files of the old formats are refused plainly or converted."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from vlmrobust.data import load_classification_dataset
from vlmrobust.eval import EVAL_TASKS, EvalTask, SuiteError, load_results, load_suite, register_eval_task, run_suite


class EmbeddingNorm(EvalTask):
    """Mean L2 norm of a model's image embeddings per dataset, and (a suite-level pass) its ratio to the first's."""

    name, cell_kinds, order = "embedding-norm", ("embedding_norm", "embedding_norm_ratio"), 60

    def load(self, spec, model):
        return load_classification_dataset(spec.source, spec.split, image_size=model.image_size,
                                           max_samples=spec.n_samples, seed=spec.seed)

    def plan_size(self, spec):
        return 2

    def run(self, run):
        def compute():
            x = torch.stack([run.data[i]["pixel_values"] for i in range(len(run.data))]).to(run.device)
            with torch.no_grad():
                norm = run.model.encode_image(x).norm(dim=-1).mean().item()
            return {"kind": "embedding_norm", "model": run.model_name, "dataset": run.spec.name, "norm": norm}

        run.outputs["norm"] = run.cell(run.key("norm"), {**run.base, "kind": "embedding_norm"}, compute)["norm"]

    def run_suite(self, run):
        ref = next(iter(run.datasets.values())).outputs["norm"]
        for r in run.datasets.values():
            run.cell(r.key("ratio"), {**r.base, "kind": "embedding_norm_ratio", "reference": ref},
                     lambda r=r: {"kind": "embedding_norm_ratio", "model": r.model_name, "dataset": r.spec.name,
                                  "ratio": r.outputs["norm"] / ref})

    def summarize(self, model, cells, suite):
        rows = {}
        for c in cells:
            rows.setdefault(c["dataset"], {})[c["kind"]] = c.get("norm", c.get("ratio"))
        return {self.name: rows}

    def markdown(self, model, summary, results):
        rows = summary.get(self.name, {})
        return ["### Embedding norm", "", "| dataset | mean norm | ratio to the first |", "|---|---|---|",
                *(f"| {d} | {r['embedding_norm']:.4f} | {r['embedding_norm_ratio']:.4f} |" for d, r in rows.items()), ""]


@pytest.fixture
def embedding_norm():
    task = register_eval_task(EmbeddingNorm())
    yield task
    EVAL_TASKS._items.pop(task.name)  # test-only: leave the process-wide registry as it was


def _norm_suite() -> dict:
    return {"name": "norms", "datasets": [
        {"name": "digits-a", "task": "embedding-norm", "source": "digits", "n_samples": 16, "seed": 0},
        {"name": "digits-b", "task": "embedding-norm", "source": "digits", "n_samples": 16, "seed": 1},
        {"name": "digits", "source": "digits", "templates": "digits", "n_samples": 8, "batch_size": 8,
         "attacks": [{"attack": "apgd-ce", "eps": ["4/255"], "steps": 2}]}]}


def test_a_new_task_is_one_class_and_one_registration():
    lines = len(inspect.getsource(EmbeddingNorm).splitlines())
    print(f"the example task: {lines} lines + 1 registration")
    assert lines <= 45


def test_a_task_registered_outside_vlmrobust_runs_resumes_and_reports(embedding_norm, tiny_open_clip_dir, tmp_path):
    model = f"local-dir:{tiny_open_clip_dir}"
    res = run_suite([model], load_suite(_norm_suite()), tmp_path, progress=False)
    cells = load_results(tmp_path)["cells"]
    a, b = cells[f"{model}|digits-a|norm"]["norm"], cells[f"{model}|digits-b|norm"]["norm"]
    assert a > 0 and b > 0 and a != b
    assert cells[f"{model}|digits-a|ratio"]["ratio"] == pytest.approx(1.0)
    assert cells[f"{model}|digits-b|ratio"]["ratio"] == pytest.approx(b / a)
    assert res["last_run"] == {"computed_cells": 4 + 2, "reused_cells": 0}
    assert res["summary"]["models"][model]["embedding-norm"]["digits-b"] == {
        "embedding_norm": b, "embedding_norm_ratio": pytest.approx(b / a)}
    report = (tmp_path / "report.md").read_text()
    section = report.split(f"## `{model}`")[1]
    # its section comes after the classification table (order 60 > 30), with the cells' numbers
    assert section.index("| dataset | n | logit scale |") < section.index("### Embedding norm")
    assert f"| digits-b | {b:.4f} | {b / a:.4f} |" in section.split("### Embedding norm")[1]
    assert "acc_vs_eps_digits.png" in report and "acc_vs_eps_digits-a" not in report  # no curves: no plot_ylabel
    again = run_suite([model], load_suite(_norm_suite()), tmp_path, progress=False, report=False)
    assert again["last_run"] == {"computed_cells": 0, "reused_cells": 6}


def test_new_task_fields_are_validated_by_the_shared_schema(embedding_norm):
    suite = load_suite(_norm_suite(), n_samples=4)
    assert [d.n_samples for d in suite.datasets] == [4, 4, 4] and suite.datasets[0].batch_size == 128
    bad = _norm_suite()
    bad["datasets"][0]["templates"] = "digits"
    with pytest.raises(SuiteError, match=r"datasets\[0\]\.templates: only for task: classification datasets \(this "
                                         r"one is task: embedding-norm; add task: classification"):
        load_suite(bad)
    bad = _norm_suite()
    bad["datasets"][0]["attacks"] = [{"attack": "apgd-ce", "eps": [0.01]}]
    with pytest.raises(SuiteError, match=r"datasets\[0\]\.attacks\[0\]: datasets of task embedding-norm take no"):
        load_suite(bad)
    with pytest.raises(SuiteError, match=r"datasets\[0\]\.task: unknown task 'embedding-nrm'; known: .*embedding-norm"):
        load_suite({"name": "x", "datasets": [{"name": "a", "task": "embedding-nrm", "source": "digits"}]})
    with pytest.raises(SuiteError, match=r"'margin' is an analysis of classification datasets"):
        load_suite({"name": "x", "datasets": [{"name": "a", "task": "margin", "source": "digits"}]})
    with pytest.raises(ValueError, match="already registered"):
        register_eval_task(EmbeddingNorm())


def test_report_needs_the_tasks_of_a_results_file(embedding_norm, tiny_open_clip_dir, tmp_path):
    from vlmrobust.eval.report import write_suite_report

    model = f"local-dir:{tiny_open_clip_dir}"
    raw = _norm_suite()
    raw["datasets"] = raw["datasets"][:1]
    run_suite([model], load_suite(raw), tmp_path, progress=False)
    data = load_results(tmp_path)
    EVAL_TASKS._items.pop("embedding-norm")
    try:
        with pytest.raises(KeyError, match=r"eval task\(s\) \['embedding-norm'\], which are not registered here"):
            write_suite_report(data, tmp_path / "again")
    finally:
        EVAL_TASKS._items["embedding-norm"] = embedding_norm


# -- results format ---------------------------------------------------------------------------------------------------

def _to_v1(data: dict) -> dict:
    """What `vlmrobust eval` wrote before v2 (the cells are the same; the suite kept analyses as dataset fields)."""
    datasets = []
    for d in data["suite"]["datasets"]:
        d = {k: v for k, v in d.items() if k != "analyses"}
        datasets.append({**d, "corruptions": None, "margin": None, "vqa": None, "caption": None,
                         **data["suite"]["datasets"][0].get("analyses", {})})
    return {**{k: v for k, v in data.items() if k != "format"}, "format": "vlmrobust.eval/v1",
            "suite": {**data["suite"], "datasets": datasets}}


def test_old_results_formats_are_refused_in_one_line_and_v1_converts(tiny_open_clip_dir, tmp_path, capsys):
    from vlmrobust.cli import main
    from vlmrobust.eval.results import ResultsFormatError

    model = f"local-dir:{tiny_open_clip_dir}"
    suite = load_suite({"name": "t", "datasets": [
        {"name": "digits", "source": "digits", "templates": "digits", "n_samples": 8, "batch_size": 8,
         "attacks": [{"attack": "apgd-ce", "eps": ["4/255"], "steps": 2}],
         "corruptions": {"types": ["contrast"], "severities": [1]}}]})
    run_suite([model], suite, tmp_path, progress=False)
    v2 = load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(_to_v1(v2)))
    with pytest.raises(SystemExit) as err:
        main(["report", str(tmp_path)])
    msg = str(err.value)
    assert "is results format v1 (vlmrobust.eval/v1, vlmrobust 0.1.0, before vlmrobust.results/v2); re-run, or " \
           f"convert it with `vlmrobust convert {tmp_path / 'results.json'}`" in msg and "\n" not in msg
    with pytest.raises(ResultsFormatError, match="--no-resume"):
        run_suite([model], suite, tmp_path, progress=False)
    assert main(["convert", str(tmp_path)]) == 0
    assert "Converted" in capsys.readouterr().out and (tmp_path / "results.v1.json").is_file()
    converted = load_results(tmp_path)
    assert converted["cells"] == v2["cells"] and converted["suite"]["datasets"] == v2["suite"]["datasets"]
    again = run_suite([model], suite, tmp_path, progress=False)  # the converted cells resume: nothing recomputed
    assert again["last_run"] == {"computed_cells": 0, "reused_cells": 3}
    recipe = tmp_path / "old-recipe"
    recipe.mkdir()
    (recipe / "results.json").write_text(json.dumps({"title": "FARE", "method": "fare", "results": {"after": {}}}))
    with pytest.raises(ResultsFormatError, match=r"is a recipe results file of format v1 \(before vlmrobust\.results"
                                                 r"/v2\); re-run the recipe, or convert its suite cells with "
                                                 r"`vlmrobust convert .*old-recipe/eval/results\.json`"):
        load_results(recipe)
