"""Model cards: model-index metadata that huggingface_hub parses back, named metrics, result sets, the adapter."""

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from vlmrobust.hub.card_results import ResultRow, rows_from_results
from vlmrobust.hub.model_card import (
    CardInfo,
    ResultSource,
    append_result_set,
    build_model_card,
    format_epsilon,
    method_citation,
    parse_card,
    rows_from_model_index,
)
from vlmrobust.testing.hub_server import local_hub, validate_card_metadata

ROWS = [
    ResultRow("cifar10", "accuracy", 0.9123, task="zero-shot-image-classification", split="test",
              dataset_id="uoft-cs/cifar10", n=1000),
    ResultRow("cifar10", "accuracy", 0.4125, attack="apgd-ce+apgd-t", norm="Linf", epsilon=4 / 255,
              split="test", dataset_id="uoft-cs/cifar10", n=1000, steps=100),
    ResultRow("cifar10", "accuracy", 0.1875, attack="apgd-ce+apgd-t", norm="Linf", epsilon=8 / 255,
              split="test", dataset_id="uoft-cs/cifar10", n=1000, steps=100),
    ResultRow("cifar10", "accuracy", 0.3, attack="apgd-ce", norm="L2", epsilon=0.5, split="test",
              dataset_id="uoft-cs/cifar10", n=1000, steps=100),
    ResultRow("shapes", "vqa_accuracy", 0.75, task="visual-question-answering", n=64),
    ResultRow("shapes", "vqa_accuracy", 0.5, attack="apgd", norm="Linf", epsilon=2 / 255,
              task="visual-question-answering", n=64, steps=10),
]
SOURCE = ResultSource("vlmrobust eval, suite fare13", "https://huggingface.co/me/fare4/blob/main/eval/results.json")


def _card(rows=ROWS, **kw):
    info = CardInfo(repo_id="me/fare4", kind="open_clip", method="fare", base_model="open_clip:ViT-B-32/openai",
                    training={"threat model (training)": "Linf, ε = 4/255"}, datasets=["ILSVRC/imagenet-1k"], **kw)
    return build_model_card(info, rows, source=SOURCE)


def test_card_metadata_round_trips_through_huggingface_hub():
    text = _card()
    assert validate_card_metadata(text) == []
    card = ModelCard(text)
    assert card.data.library_name == "open_clip" and card.data.base_model == "timm/vit_base_patch32_clip_224.openai"
    assert card.data.model_name == "me/fare4" and "fare" in card.data.tags
    results = card.data.eval_results
    assert len(results) == len(ROWS)
    # the same rows come back from the metadata (values kept to 1e-4 as percentages with 2 decimals)
    back = rows_from_model_index(parse_card(text)[0]["model-index"])
    assert [r.__class__(**{**r.to_dict(), "value": 0}) for r in back] == \
           [r.__class__(**{**r.to_dict(), "value": 0}) for r in ROWS]
    assert [r.value for r in back] == pytest.approx([r.value for r in ROWS], abs=5e-5)
    name, evals = model_index_to_eval_results(parse_card(text)[0]["model-index"])
    assert name == "me/fare4" and {e.source_url for e in evals} == {SOURCE.url}


def test_every_robust_metric_is_named_with_its_attack_and_epsilon():
    meta, body = parse_card(_card())
    metrics = [m for res in meta["model-index"][0]["results"] for m in res["metrics"]]
    robust = [m for m in metrics if m["type"].startswith("robust_")]
    assert len(robust) == 4
    for m, row in zip(robust, [r for r in ROWS if r.attack]):
        eps = format_epsilon(row.epsilon, row.norm)
        assert row.attack in m["name"] and f"ε={eps}" in m["name"] and row.norm in m["name"], m
        assert m["args"] == {"attack": row.attack, "norm": row.norm, "epsilon": row.epsilon,
                             "steps": row.steps, "n": row.n}
    # within one result entry, (type, config) tells every metric apart
    for res in meta["model-index"][0]["results"]:
        keys = [(m["type"], m.get("config")) for m in res["metrics"]]
        assert len(keys) == len(set(keys))
    assert {m["name"] for m in metrics} >= {"clean accuracy", "robust accuracy (apgd-ce+apgd-t, Linf, ε=4/255)",
                                            "robust accuracy (apgd-ce, L2, ε=0.5)"}
    # the table says the same
    assert "| cifar10 (test) | accuracy (%) | apgd-ce+apgd-t (Linf) | 8/255 | 1000 | 18.8 |" in body
    assert "| shapes | vqa accuracy (%) | clean | 0 | 64 | 75.0 |" in body


def test_card_validates_on_the_local_hub_with_the_real_client():
    with local_hub():
        ModelCard(_card()).validate()
        bad = _card().replace("    dataset:\n      name: cifar10\n      type: uoft-cs/cifar10",
                              "    dataset:\n      name: cifar10", 1)
        assert bad != _card()
        with pytest.raises(ValueError, match="cannot be parsed"):
            ModelCard(bad)
        # what create_commit sends before uploading a README.md: the server refuses it
        with pytest.raises(ValueError, match=r"(?s)Invalid metadata in README.md.*dataset"):
            HfApi()._validate_yaml(bad)


def test_appending_a_result_set_keeps_the_earlier_ones():
    text = _card(ROWS[:2])
    later = [ResultRow("digits", "accuracy", 0.5), ResultRow("digits", "accuracy", 0.25, attack="apgd-ce",
                                                             norm="Linf", epsilon=2 / 255, steps=25)]
    src2 = ResultSource("vlmrobust eval, suite digits", "https://huggingface.co/me/fare4/blob/main/eval/d/r.json")
    new = append_result_set(text, later, src2, repo_id="me/fare4", heading="Suite digits")
    assert validate_card_metadata(new) == []
    meta, body = parse_card(new)
    results = meta["model-index"][0]["results"]
    assert [r["source"]["url"] for r in results] == [SOURCE.url, src2.url]
    assert rows_from_model_index(meta["model-index"])[2:] == later
    assert body.index("### Suite digits") > body.index("cifar10") and "Loading" in body
    assert ModelCard(new).data.eval_results[-1].metric_name == "robust accuracy (apgd-ce, Linf, ε=2/255)"
    # a card without metadata (written by hand) gets a model-index too
    plain = append_result_set("# my model\n\nhand-written\n", later, src2, repo_id="me/x")
    assert parse_card(plain)[0]["model-index"][0]["name"] == "me/x" and "hand-written" in plain


def test_adapter_reads_suite_cells_of_one_model():
    results = {"format": "vlmrobust.eval/v1", "models": ["before", "after"],
               "suite": {"datasets": [{"name": "cifar10", "source": "uoft-cs/cifar10", "split": "test"}]},
               "cells": {}}
    for model, clean, rob in (("before", 0.9, 0.0), ("after", 0.8, 0.4)):
        results["cells"][f"{model}|cifar10|clean"] = {"kind": "clean", "model": model, "dataset": "cifar10",
                                                      "accuracy": clean, "n": 10}
        results["cells"][f"{model}|cifar10|apgd-ce|Linf|0.0156863"] = {
            "kind": "attack", "model": model, "dataset": "cifar10", "attack": "apgd-ce", "norm": "Linf",
            "eps": 4 / 255, "steps": 10, "accuracy": rob, "n": 10}
        results["cells"][f"{model}|cifar10|margin|x"] = {"kind": "margin", "model": model, "dataset": "cifar10"}
    rows = rows_from_results(results)  # a recipe's file: "after" is the checkpoint
    assert rows == [ResultRow("cifar10", "accuracy", 0.8, split="test", dataset_id="uoft-cs/cifar10", n=10),
                    ResultRow("cifar10", "accuracy", 0.4, attack="apgd-ce", norm="Linf", epsilon=4 / 255,
                              split="test", dataset_id="uoft-cs/cifar10", n=10, steps=10)]
    assert rows_from_results(results, "before")[1].value == 0.0
    del results["cells"]["after|cifar10|clean"], results["cells"]["after|cifar10|apgd-ce|Linf|0.0156863"]
    del results["cells"]["after|cifar10|margin|x"]
    results["models"] = ["a", "b"]
    results["cells"]["b|cifar10|clean"] = {"kind": "clean", "model": "b", "dataset": "cifar10", "accuracy": 1.0}
    with pytest.raises(ValueError, match="several models"):
        rows_from_results(results)


def test_epsilons_and_method_papers():
    assert format_epsilon(4 / 255, "Linf") == "4/255" and format_epsilon(0.5 / 255, "Linf") == "0.5/255"
    assert format_epsilon(0.25, "L2") == "0.25" and format_epsilon(0.013, "Linf") == "0.013"
    name, cite = method_citation("fare")
    assert name == "FARE" and "[arXiv:2402.12336](https://arxiv.org/abs/2402.12336)" in cite
    assert method_citation("tecoa")[0] == "TeCoA" and "2212.07016" in method_citation("tecoa")[1]
    assert method_citation("not-a-method") == ("not-a-method", None)
