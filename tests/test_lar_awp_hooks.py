"""LAR-AWP's forward hooks are attached only inside `probing()` / `perturbed()` (issue 17: the attack's forwards pay
nothing for them), or at all times with `persistent_hooks=True` (a compiled module), with the same results."""

from __future__ import annotations

import torch


def _net_and_layers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 3))
    return net, {"a": net[0], "b": net[2], "c": net[4]}


def _hooked(layers):
    return sorted(n for n, m in layers.items() if m._forward_hooks)


def _run(persistent: bool):
    from vlmrobust.optim import LowRankWeightPerturbation

    net, layers = _net_and_layers()
    awp = LowRankWeightPerturbation(layers, rho=0.3, max_rank=2, interval=1, top_fraction=1 / 3,
                                    bottom_fraction=1 / 3, persistent_hooks=persistent)
    x = torch.randn(2, 4, 6)
    seen = {"idle": _hooked(layers)}
    with awp.probing():
        seen["probing"] = _hooked(layers)
        net(x).pow(2).sum().backward()
    seen["after probing"] = _hooked(layers)
    awp.compute(step=0)
    with torch.no_grad(), awp.perturbed():
        seen["perturbed"] = _hooked(layers)
        with awp.probing():  # nested: every layer probed, the enclosing context's hooks stay
            seen["nested"] = _hooked(layers)
        seen["after nested"] = _hooked(layers)
        out = net(x)
    seen["after perturbed"] = _hooked(layers)
    with torch.no_grad():
        plain = net(x)
    awp.remove()
    with awp.probing():
        seen["after remove"] = _hooked(layers)
    return seen, {n: g.clone() for n, g in awp.grads.items()} if awp.grads else {}, out, plain, sorted(awp.ranks)


def test_hooks_are_attached_only_for_the_passes_that_need_them():
    seen, _, out, plain, _ = _run(persistent=False)
    everything = ["a", "b", "c"]
    assert seen["idle"] == seen["after probing"] == seen["after perturbed"] == seen["after remove"] == []
    assert seen["probing"] == seen["nested"] == everything
    assert 0 < len(seen["perturbed"]) < 3 and seen["after nested"] == seen["perturbed"]  # the layers with a Δ
    assert not torch.equal(out, plain)


def test_persistent_hooks_give_the_same_results():
    on_demand, persistent = _run(persistent=False), _run(persistent=True)
    assert persistent[0]["idle"] == persistent[0]["after perturbed"] == ["a", "b", "c"]
    assert persistent[0]["after remove"] == []
    for a, b in zip(on_demand[2:4], persistent[2:4]):
        assert torch.equal(a, b)
