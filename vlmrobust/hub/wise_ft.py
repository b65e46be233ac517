"""WiSE-FT: weight-space ensembles `α·θ_ft + (1 − α)·θ₀` of a fine-tuned checkpoint and its base, written in the
backend's native layout and evaluated through the suite runner (`vlmrobust wise-ft`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..optim import ReferenceWeights

#: backend -> `create_model` prefix that reloads a checkpoint folder saved by that backend
RELOAD_PREFIX = {"open_clip": "local-dir", "hf-clip": "hf-clip"}


def parse_alphas(text: str | Sequence[float]) -> list[float]:
    """`"0,0.25,0.5"` (or a sequence) -> floats in [0, 1], in the order given (never truncated to integers)."""
    items = [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    alphas = [float(a) for a in items]
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if not alphas or bad:
        raise ValueError(f"WiSE-FT alphas must be floats in [0, 1], e.g. 0,0.25,0.5,0.75,1; got {text!r}.")
    return alphas


def alpha_dirname(alpha: float) -> str:
    """Folder name of the checkpoint at `alpha` (`alpha_0.25`; exact: `repr`-style digits, no rounding)."""
    return f"alpha_{alpha!r}"


def wise_ft(model: str, base: str, alphas: str | Sequence[float], output_dir: str | os.PathLike, *,
            suite: str | os.PathLike | None = None, device: str | None = None, bf16: bool = False,
            n_samples: int | None = None, progress: bool = True) -> dict:
    """Interpolate a fine-tuned model with its base at each α, save each in native layout, evaluate each.

    WiSE-FT (Wortsman et al., CVPR 2022, arXiv 2109.01903): `θ(α) = α·θ_ft + (1 − α)·θ₀` for every parameter of the
    backend's native model (vision and text towers alike; buffers come from the fine-tuned model), α = 0 being the
    base and α = 1 the fine-tuned model. The checkpoints go to `<output_dir>/alpha_<α>/` (plain open_clip /
    transformers layouts) with the α and both sources in their `vlmrobust_config.json`; with a `suite`, every one
    is evaluated by the suite runner into `<output_dir>/eval/` (one results.json and report, a row per α).

    A trained classification head (a `digrap` run with `train_head`) lives in the checkpoint's extra-weights file,
    not in the native model: it is not interpolated, and the suite evaluates each α zero-shot. LoRA runs are saved
    merged, so their native weights interpolate like full fine-tuning.

    Args:
        model (`str`): `create_model` id of the fine-tuned checkpoint, e.g. `local-dir:outputs/quickstart-digrap`.
        base (`str`): `create_model` id of θ₀, the model the run started from.
        alphas (`str` or `Sequence[float]`): e.g. `"0,0.25,0.5,0.75,1"`.
        output_dir (`str` or `os.PathLike`): where the checkpoints (and `eval/`) go.
        suite (`str`, *optional*): a suite name or YAML path; none: only write the checkpoints.
        device (`str`, *optional*), bf16 (`bool`), n_samples (`int`, *optional*), progress (`bool`): passed to
            `vlmrobust.eval.run_suite`.

    Returns:
        `dict`: `{"checkpoints": {α: folder}, "results": <run_suite's results or None>}`.
    """
    from ..models import create_model

    alphas = parse_alphas(alphas)
    ft, ref_model = create_model(model), create_model(base)
    if ft.backend != ref_model.backend or ft.backend not in RELOAD_PREFIX:
        raise ValueError(f"WiSE-FT interpolates two checkpoints of one CLIP backend ({', '.join(RELOAD_PREFIX)}); "
                         f"got {ft.backend!r} and {ref_model.backend!r}.")
    native_ft, native_ref = getattr(ft, "model", ft), getattr(ref_model, "model", ref_model)
    theta0 = ReferenceWeights(native_ref)
    shapes = {n: p.shape for n, p in native_ft.named_parameters()}
    other = [n for n in theta0 if n not in shapes or theta0[n].shape != shapes[n]]
    if other or len(theta0) != len(shapes):
        raise ValueError(f"{model} and {base} are not the same architecture (e.g. {other[:3]}).")
    state = native_ft.state_dict()
    out, folders = Path(output_dir), {}
    for alpha in alphas:
        folder = out / alpha_dirname(alpha)
        ft.save_pretrained(folder, state_dict=theta0.interpolate(state, alpha),
                           wise_ft={"alpha": alpha, "fine_tuned": model, "base": base, "paper": "2109.01903"})
        folders[alpha] = folder
    results = None
    if suite is not None:
        from ..eval.runner import run_suite

        models = {f"WiSE-FT α={a:g}": f"{RELOAD_PREFIX[ft.backend]}:{f}" for a, f in folders.items()}
        results = run_suite(models, suite, out / "eval", device=device, bf16=bf16, n_samples=n_samples,
                            progress=progress)
    return {"checkpoints": folders, "results": results}
