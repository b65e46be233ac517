"""Metrics against hand-computed values on crafted cases where each rule of the definition matters."""

from __future__ import annotations

import math

import pytest
import torch

from vlmrobust.eval.borda import borda_ranking
from vlmrobust.eval.corruptions import corruption_errors
from vlmrobust.eval.margin import estimate_robust_accuracy, kendall_tau, margin_threshold
from vlmrobust.eval.zero_shot import expected_robustness
from vlmrobust.metrics import (
    majority_answer,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
    wilson_interval,
)


# -- VQA answer normalisation (the official toolkit's rules, one case each) ------------------------------------------
@pytest.mark.parametrize("raw,normalised", [
    ("Two", "2"),                       # lower-case, number words -> digits
    ("none", "0"), ("ten", "10"),
    ("the red circle", "red circle"),   # articles dropped
    ("an apple a day", "apple day"),
    ("dont", "don't"),                  # contractions restored
    ("yes!", "yes"), ("why?", "why"),    # punctuation removed
    ("red/blue", "red blue"),           # ... or replaced by a space when it joins words
    ("red / blue", "red blue"),         # ... and removed when spaced
    ("x-ray -yes", "xray yes"),         # a mark spaced on either side anywhere is removed everywhere
    ("x-ray- yes", "xray yes"),
    ("1,000", "1000"),                  # a comma between digits goes, and with it every punctuation mark
    ("3.5", "3.5"),                     # a decimal point stays
    ("end.", "end"),                    # a full stop goes
    ("  left\tside\n", "left side"),    # whitespace
])
def test_normalize_answer_rules(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_punctuation_and_digit_article_steps():
    assert process_punctuation("a-b") == "a b" and process_punctuation("a - b") == "a  b"
    assert process_punctuation("(x)") == " x " and process_punctuation("1,5 (x)") == "15 x"
    assert process_digit_article("The THREE Cats") == "3 cats"


def _official(prediction, references):
    """The 10-annotator formula written out: mean over leave-one-out subsets of min(1, matches / 3)."""
    refs = [normalize_answer(r) for r in references]
    pred = normalize_answer(prediction)
    accs = [min(1.0, sum(r == pred for j, r in enumerate(refs) if j != i) / 3) for i in range(len(refs))]
    return sum(accs) / len(accs)


@pytest.mark.parametrize("k", range(0, 11))
def test_vqa_accuracy_ten_annotator_formula(k):
    # k of 10 annotators gave the predicted answer: 0, 0.3, 0.6, 0.9, then 1 from k = 4 on
    refs = ["red"] * k + ["blue"] * (10 - k)
    expected = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(k, 1.0)
    assert vqa_accuracy("Red.", refs) == pytest.approx(expected)
    assert vqa_accuracy("Red.", refs) == pytest.approx(_official("Red.", refs))


def test_vqa_accuracy_normalises_both_sides_and_the_strict_mode():
    assert vqa_accuracy("two", ["2"] * 10) == 1.0 and vqa_accuracy("2", ["Two"] * 10) == 1.0
    # the toolkit's strict mode: references' digits / articles are not normalised (released data already is)
    assert vqa_accuracy("2", ["Two"] * 10, strict_official=True) == 0.0
    # the toolkit processes the prediction only when the references disagree
    assert vqa_accuracy("the dog!", ["dog"] * 10, strict_official=True) == 0.0
    assert vqa_accuracy("the dog!", ["dog"] * 9 + ["cat"], strict_official=True) == 1.0
    assert vqa_accuracy("the dog!", ["dog"] * 9 + ["cat"]) == 1.0
    # tabs / newlines in answers are spaces, in the strict mode too
    assert vqa_accuracy("red\tcar", ["red car"] * 10, strict_official=True) == 1.0
    assert vqa_accuracy("red\ncar", ["red car"] * 10, strict_official=True) == 1.0
    for sep in ("\n", "\t"):
        refs = ["red" + sep + "car"] * 3 + ["blue"] * 7
        assert vqa_accuracy("red car", refs, strict_official=True) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="reference"):
        vqa_accuracy("x", [])


def test_majority_answer_counts_after_normalisation_and_keeps_the_first_spelling():
    assert majority_answer(["three", "Two", "2", "3.", "two"]) == "Two"   # "2" x3 beats "3" x2
    assert majority_answer(["cat", "dog"]) == "cat"                     # tie: first seen


# -- expected robustness, Borda, corruptions, margins ---------------------------------------------------------------
def test_expected_robustness_is_the_weighted_mean_over_the_grid():
    acc = {0.0: 0.9, 2 / 255: 0.6, 4 / 255: 0.3}
    assert expected_robustness(acc) == pytest.approx(0.6)
    assert expected_robustness(acc, {0.0: 2, 2 / 255: 1, 4 / 255: 1}) == pytest.approx((1.8 + 0.6 + 0.3) / 4)
    with pytest.raises(ValueError, match="weight"):
        expected_robustness(acc, {0.0: 1})
    with pytest.raises(ValueError, match="at least one"):
        expected_robustness({})


def test_borda_ranks_on_common_columns_with_average_ties():
    # names out of alphabetical order, and the model with an extra column last
    scores = {
        "zeta": {"d1": {"clean": 0.9, "rob": 0.5}, "d2": {"clean": 0.8}},
        "alpha": {"d1": {"clean": 0.7, "rob": 0.1}, "d2": {"clean": 0.7}},
        "mu": {"d1": {"clean": 0.9, "rob": 0.7}, "d2": {"clean": 0.6}, "d3": {"clean": 1.0}},
    }
    rows = {r["model"]: r for r in borda_ranking(scores)}
    # columns every model has: d1/clean (zeta, mu tie: 1.5 each, alpha 3), d1/rob (mu 1, zeta 2, alpha 3),
    # d2/clean (zeta 1, alpha 2, mu 3); d3 is mu's alone and does not count
    assert rows["zeta"]["borda"] == pytest.approx(1.5 + 2 + 1) and rows["mu"]["borda"] == pytest.approx(1.5 + 1 + 3)
    assert rows["alpha"]["borda"] == pytest.approx(3 + 3 + 2)
    assert rows["zeta"]["n_columns"] == 3 and rows["zeta"]["mean_rank"] == pytest.approx(4.5 / 3)
    assert [r["model"] for r in borda_ranking(scores)] == ["zeta", "mu", "alpha"]
    assert [r["place"] for r in borda_ranking(scores)] == [1, 2, 3]
    # equal totals: by name
    assert [r["model"] for r in borda_ranking({"b": {"d": {"c": 0.5}}, "a": {"d": {"c": 0.5}}})] == ["a", "b"]
    # nothing in common: no column counts, the mean rank is undefined
    apart = borda_ranking({"a": {"d1": {"c": 0.5}}, "b": {"d2": {"c": 0.5}}})
    assert all(r["n_columns"] == 0 and r["borda"] == 0 and math.isnan(r["mean_rank"]) for r in apart)
    assert borda_ranking({}) == []


def test_corruption_errors_by_hand():
    acc = {"fog": {1: 0.8, 3: 0.4}, "new": {2: 0.5}, "snow": {1: 0.6}}  # a type without reference before others
    ref = {"fog": [0.5, 0.6, 0.8, 0.9, 1.0], "snow": [0.4, 0.5, 0.6, 0.7, 0.8]}
    out = corruption_errors(acc, ref)
    assert out["mean_accuracy"] == pytest.approx((0.8 + 0.4 + 0.6 + 0.5) / 4)
    assert out["mean_error"] == pytest.approx(1 - out["mean_accuracy"])
    assert out["accuracy_by_type"] == pytest.approx({"fog": 0.6, "snow": 0.6, "new": 0.5})
    assert out["accuracy_by_severity"] == pytest.approx({1: 0.7, 2: 0.5, 3: 0.4})
    # CE_c = sum of errors over the severities present / sum of the reference's errors at those severities
    assert out["ce"] == pytest.approx({"fog": (0.2 + 0.6) / (0.5 + 0.8), "snow": 0.4 / 0.4})
    assert out["mce"] == pytest.approx(((0.8 / 1.3) + 1.0) / 2) and out["mce_types"] == ["fog", "snow"]
    assert corruption_errors(acc)["mce"] is None and corruption_errors({}) == {}
    # a reference with no error at the severities present cannot normalise: that type is left out of mCE
    assert corruption_errors({"fog": {1: 0.9}}, {"fog": [0.0, 0.1, 0.2, 0.3, 0.4]})["ce"] == {}


def test_margin_threshold_and_estimate_by_hand():
    margins = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    correct = torch.tensor([True, True, True, True, True, False])
    robust = torch.tensor([True, True, False, False, False, False])
    # 2 robust points: λ midway between the 2nd and 3rd largest margins of the correct points
    assert margin_threshold(margins, correct, robust) == pytest.approx(3.5)
    assert margin_threshold(margins, correct, torch.zeros(6, dtype=torch.bool)) == pytest.approx(5.0)
    assert margin_threshold(margins, correct, correct) == -math.inf
    all_margins = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 6.0, 3.6, 3.4, 9.0])
    all_correct = torch.tensor([True] * 5 + [False] + [True, True, True, False])
    est = estimate_robust_accuracy(all_margins, all_correct, torch.arange(6), robust)
    # above λ = 3.5 and correct: 5.0, 4.0, 6.0, 3.6 (9.0 is wrong) -> 4 of 10
    assert est.threshold == pytest.approx(3.5) and est.estimate == pytest.approx(0.4)
    assert est.subset_robust_accuracy == pytest.approx(2 / 6) and est.subset_size == 6
    # a point exactly at λ is not above it
    at = estimate_robust_accuracy(torch.tensor([5.0, 3.0, 1.0, 4.0]), torch.ones(4, dtype=torch.bool), torch.arange(3),
                                  torch.tensor([True, False, False]))
    assert at.threshold == pytest.approx(4.0) and at.estimate == pytest.approx(0.25)


def test_kendall_tau_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau(a, a * 10)[0] == pytest.approx(1.0)
    assert kendall_tau(a, -a)[0] == pytest.approx(-1.0)
    # one discordant pair of 6: (5 - 1) / 6
    assert kendall_tau(a, torch.tensor([1.0, 3.0, 2.0, 4.0]))[0] == pytest.approx(4 / 6)
    assert all(math.isnan(v) for v in kendall_tau(a[:1], a[:1]))
    assert kendall_tau(a[:2], a[:2])[0] == pytest.approx(1.0)  # two points are enough


# -- Wilson score interval -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("successes,n,confidence,low,high", [
    # z = 1.959964, z²/n = 0.0192073: centre 0.5, half-width 1.923029 · √(0.00125 + 0.0000240) = 0.068639
    (100, 200, 0.95, 0.431361, 0.568639),
    # p̂ = 0.725: centre 0.734604 / 1.019207 = 0.720760, half-width 1.923029 · √(0.000996875 + 0.0000240) = 0.061443
    (145, 200, 0.95, 0.659317, 0.782203),
    # 0 of 10: centre = half-width = 0.1920729 / 1.3841459 = 0.1387664, so [0, 0.277533] (Wald would give [0, 0])
    (0, 10, 0.95, 0.0, 0.277533),
    # 99%: z = 2.575829, half-width 2.493121 · √(0.00125 + 0.0000415) = 0.089595
    (100, 200, 0.99, 0.410405, 0.589595),
])
def test_wilson_interval_by_hand(successes, n, confidence, low, high):
    got = wilson_interval(successes, n, confidence)
    assert got == pytest.approx((low, high), abs=2e-6)


def test_wilson_interval_edges_and_symmetry():
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    lo, hi = wilson_interval(30, 200)
    assert (1 - hi, 1 - lo) == pytest.approx(wilson_interval(170, 200))
    assert lo < 30 / 200 < hi
    # a VQA accuracy (fractional per-question scores) enters as its sum of scores
    assert wilson_interval(0.725 * 200, 200) == pytest.approx(wilson_interval(145, 200))
    # more questions, narrower interval
    assert wilson_interval(1450, 2000)[1] - wilson_interval(1450, 2000)[0] < hi - lo
    for bad in [(5, 0), (-1, 10), (11, 10)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(5, 10, confidence=95)
