"""Weight-space hooks defined by the tests (not shipped): a ball around θ₀, a stateful transform, a gradient log.

Used by test_weight_space.py in-process and by dist_train_run.py (job option `@ws`) under DDP / DeepSpeed.
"""


from vlmrobust.optim import GradientTransform, PostStepConstraint


class L2Ball(PostStepConstraint):
    """Project each tensor back into the L2 ball of `radius` around θ₀ after every step; count the projections."""

    needs_reference = True
    state_key = "l2ball"

    def __init__(self, radius: float):
        super().__init__()
        self.radius = radius
        self.projected = 0

    def apply(self, name, param, ref):
        d = param - ref.to(param)
        n = float(d.norm())
        if n <= self.radius:
            return None
        self.projected += 1
        return ref.to(param) + d * (self.radius / n)


class EMAGradient(GradientTransform):
    """A stateful transform: `g ← g + m`, `m ← β·m + g_raw` (m per parameter name), so a resume that loses the
    state changes the weights."""

    state_key = "ema"

    def __init__(self, beta: float = 0.5):
        super().__init__()
        self.beta = beta

    def transform(self, name, param, grad, ref):
        s = self.state.setdefault(name, {"calls": 0})
        m = s.get("m")
        out = grad.clone() if m is None else grad + m.to(grad)
        s["m"] = grad.detach().clone() if m is None else self.beta * m.to(grad) + grad
        s["calls"] += 1
        return out


class GradientLog(GradientTransform):
    """Identity; keeps every gradient it is given, in call order (`seen`: list of (call index, name, gradient))."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.calls = {}

    def transform(self, name, param, grad, ref):
        k = self.calls.get(name, 0)
        self.calls[name] = k + 1
        self.seen.append((k, name, grad.detach().float().cpu().clone()))
        return grad
