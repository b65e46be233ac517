"""WiSE-FT (arXiv 2109.01903), `vlmrobust wise-ft`: α = 0 / 1 give the endpoints, 0.5 the midpoint, fractional α are
not truncated; each checkpoint is a plain open_clip folder, and each is evaluated through the suite runner."""

import open_clip
import pytest
import torch

from vlmrobust.cli import main as cli
from vlmrobust.eval import load_results
from vlmrobust.hub.wise_ft import alpha_dirname, parse_alphas
from vlmrobust.models import create_model

SUITE = """name: wise-ft-test
description: clean accuracy on 16 digits (test only)
defaults: {split: test, n_samples: 16, batch_size: 16, seed: 0}
datasets:
  - name: digits
    source: digits
    templates: digits
"""


@pytest.fixture(scope="module")
def fine_tuned(tiny_open_clip_dir, tmp_path_factory):
    """θ_ft = θ₀ + 1 on every parameter (so θ(α) = θ₀ + α exactly)."""
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    sd = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.model.state_dict().items()}
    out = tmp_path_factory.mktemp("ft")
    model.save_pretrained(out, state_dict=sd)
    return out


def _weights(folder):
    return open_clip.create_model_and_transforms(f"local-dir:{folder}")[0].state_dict()


def test_alphas_are_floats_in_the_unit_interval():
    assert parse_alphas("0,0.25,0.5,0.75,1") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas([0.3]) == [0.3] and alpha_dirname(0.25) == "alpha_0.25" and alpha_dirname(1.0) == "alpha_1.0"
    for bad in ("1.5", "", "-0.1,0.5"):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            parse_alphas(bad)


def test_endpoints_midpoint_and_fractional_alphas(tiny_open_clip_dir, fine_tuned, tmp_path):
    out = tmp_path / "wise"
    assert cli(["wise-ft", "--model", f"local-dir:{fine_tuned}", "--base", f"local-dir:{tiny_open_clip_dir}",
                "--alphas", "0,0.25,0.5,1", "--output", str(out)]) == 0
    base, ft = _weights(tiny_open_clip_dir), _weights(fine_tuned)
    for alpha in (0.0, 0.25, 0.5, 1.0):
        got = _weights(out / alpha_dirname(alpha))  # plain open_clip loads each
        for k, v in base.items():
            if not v.is_floating_point():
                continue
            want = {0.0: v, 1.0: ft[k]}.get(alpha, v + alpha)
            torch.testing.assert_close(got[k], want, rtol=0, atol=1e-6, msg=lambda m, k=k, a=alpha: f"α={a} {k}: {m}")
    mid = _weights(out / alpha_dirname(0.5))
    torch.testing.assert_close(mid["visual.proj"], (base["visual.proj"] + ft["visual.proj"]) / 2)


def test_each_alpha_is_evaluated_through_the_suite(tiny_open_clip_dir, fine_tuned, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "wise"
    assert cli(["wise-ft", "--model", f"local-dir:{fine_tuned}", "--base", f"local-dir:{tiny_open_clip_dir}",
                "--alphas", "0,0.5,1", "--suite", str(suite), "--output", str(out), "--device", "cpu",
                "--no-progress"]) == 0
    data = load_results(out / "eval")
    assert set(data["models"]) == {"WiSE-FT α=0", "WiSE-FT α=0.5", "WiSE-FT α=1"}
    assert (out / "eval" / "report.md").is_file()
    with pytest.raises(ValueError, match="same architecture|one CLIP backend"):
        from vlmrobust.hub.wise_ft import wise_ft

        wise_ft("llava:tiny", f"local-dir:{tiny_open_clip_dir}", "0.5", tmp_path / "x")
