"""Property-based tests (hypothesis): the attacks stay in the ε-ball and the [0, 1] box and are deterministic for any
shape and budget; budgets, fractions, suites and results files are parsed or refused with vlmrobust's own error,
never a raw exception (issue 18)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vlmrobust.attacks import build_attack, check_budget  # noqa: E402
from vlmrobust.attacks.base import per_sample_norm  # noqa: E402

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Linear(nn.Module):
    """A random linear classifier over any image shape (its weights made on first use, per input size)."""

    def __init__(self, n_classes: int, seed: int):
        super().__init__()
        self.n_classes, self.seed = n_classes, seed
        self.weight = nn.Parameter(torch.zeros(0))

    def forward(self, x):
        d = x[0].numel()
        if self.weight.numel() != d * self.n_classes:
            g = torch.Generator().manual_seed(self.seed)
            self.weight = nn.Parameter(torch.randn(self.n_classes, d, generator=g))
        return x.flatten(1) @ self.weight.T


@st.composite
def attack_cases(draw):
    norm = draw(st.sampled_from(["Linf", "L2"]))
    eps = draw(st.floats(1e-3, 16 / 255 if norm == "Linf" else 1.0))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    name = draw(st.sampled_from(["pgd", "apgd-ce", "apgd-dlr", "apgd-t"]))
    kind = draw(st.sampled_from(["uniform", "zeros", "ones", "binary"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = {"uniform": torch.rand(shape, generator=g), "zeros": torch.zeros(shape), "ones": torch.ones(shape),
         "binary": (torch.rand(shape, generator=g) > 0.5).float()}[kind]
    y = torch.randint(0, 5, (shape[0],), generator=g)
    return name, norm, eps, x, y, seed


@FAST
@given(attack_cases())
def test_attacks_stay_in_the_ball_and_the_box_for_any_shape_and_are_deterministic(case):
    name, norm, eps, x, y, seed = case
    model = Linear(5, seed)
    kw = dict(norm=norm, eps=eps, steps=3, seed=seed)
    if name == "apgd-t":
        kw["n_target_classes"] = 2
    x_adv = build_attack(name, model, **kw).perturb(x, y).x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (per_sample_norm(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    again = build_attack(name, model, **kw).perturb(x, y).x_adv
    assert torch.equal(x_adv, again)


@FAST
@given(st.sampled_from(["Linf", "L2", "linf", "l2"]), st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                                                 st.integers(-5, 300)))
def test_budgets_are_accepted_or_refused_with_a_value_error(norm, eps):
    try:
        check_budget(norm, eps)
    except ValueError:
        return
    assert 0 <= float(eps) < float("inf")


@FAST
@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_fractions_in_configs_parse_to_their_value(a, b):
    from vlmrobust.script_utils import _fraction

    assert _fraction(f"{a}/{b}") == pytest.approx(a / b)
    assert _fraction([f"{a} / {b}", "x"]) == [pytest.approx(a / b), "x"]


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(json_values, st.fixed_dictionaries({"format": st.just("vlmrobust.results/v2"),
                                                     "cells": json_values}, optional={"models": json_values})))
def test_any_json_is_loaded_or_refused_as_a_results_format_error(tmp_path, value):
    from vlmrobust.eval.results import ResultsFormatError, load_results

    path = tmp_path / "results.json"
    path.write_text(json.dumps(value))
    try:
        data = load_results(path)
    except ResultsFormatError:
        return
    assert isinstance(data["cells"], dict)


@settings(max_examples=30, deadline=None)
@given(n=st.one_of(st.none(), st.integers(-3, 50), st.text(max_size=4)),
       bs=st.one_of(st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=4)))
def test_suite_fields_are_parsed_or_refused_with_a_suite_error(n, bs):
    from vlmrobust.eval.schema import SuiteError
    from vlmrobust.eval.suite import load_suite

    spec = {"name": "p", "datasets": [{"name": "d", "source": "digits", "n_samples": n, "batch_size": bs,
                                       "attacks": [{"attack": "apgd-ce", "norm": "Linf", "eps": ["4/255"]}]}]}
    try:
        suite = load_suite(spec)
    except SuiteError:
        return
    ds = suite.datasets[0]
    assert isinstance(ds.batch_size, int) and ds.batch_size >= 1
    assert ds.n_samples is None or (isinstance(ds.n_samples, int) and ds.n_samples >= 1)


def test_a_valid_suite_spec_loads():  # the property above is not vacuous
    from vlmrobust.eval.suite import load_suite

    spec = {"name": "p", "datasets": [{"name": "d", "source": "digits", "n_samples": 10, "batch_size": 32,
                                       "attacks": [{"attack": "apgd-ce", "norm": "Linf", "eps": ["4/255"]}]}]}
    assert load_suite(spec).datasets[0].batch_size == 32
