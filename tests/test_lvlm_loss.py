"""The LVLM answer loss, checked directly: next-token shift, masking of prompt / padding, per-sample reductions."""

from __future__ import annotations

import math

import pytest
import torch

from vlmrobust.models import create_model
from vlmrobust.models.lvlm_base import IGNORE_INDEX, sequence_ce


def _hand_ce(logits, labels, reduction):
    """Written out: the token at position t+1 is predicted from the logits at position t; -100 is not scored."""
    out = []
    for b in range(labels.shape[0]):
        nll, n = 0.0, 0
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            row = [float(v) for v in logits[b, t]]
            log_z = math.log(sum(math.exp(v) for v in row))
            nll += log_z - row[target]
            n += 1
        out.append(nll if reduction == "sum" else nll / max(n, 1))
    return torch.tensor(out)


def test_sequence_ce_is_the_shifted_masked_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 5, generator=g) * 3
    m = IGNORE_INDEX
    labels = torch.tensor([
        [m, m, 2, 4, m, m],  # two answer tokens, then padding
        [3, m, m, 1, 0, 2],  # position 0 is labelled but has no preceding logit: never scored
        [m, m, m, m, m, m],  # nothing supervised: loss 0, not NaN
        [m, m, m, m, m, 4],  # one supervised token: its mean is its own loss
    ])
    for reduction in ("mean", "sum"):
        torch.testing.assert_close(sequence_ce(logits, labels, reduction), _hand_ce(logits, labels, reduction))
    mean = sequence_ce(logits, labels)
    # the crafted case tells the mistakes apart: no shift, a global mean, an unmasked sum
    unshifted = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=m, reduction="none")
    assert not torch.allclose(mean[:2], ((unshifted * (labels != m)).sum(1) / (labels != m).sum(1))[:2])
    assert not torch.allclose(mean[:2], sequence_ce(logits, labels, "sum")[:2])
    assert mean[2] == 0 and sequence_ce(logits.bfloat16(), labels).dtype == torch.float32
    with pytest.raises(ValueError, match="reduction"):
        sequence_ce(logits, labels, "none")


@pytest.mark.parametrize("spec", ["llava:tiny", "qwen_vl:tiny", "paligemma:tiny"])
def test_answer_loss_matches_the_models_own_loss(spec):
    # the foreign check: for one sample, the mean answer loss is transformers' own causal-LM loss with these labels
    model = create_model(spec)
    x = torch.rand(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    batch = model.build_batch(["what colour is the shape?", "how many shapes?"], ["red", "two"])
    assert (batch["labels"] != IGNORE_INDEX).sum(1).min() >= 2  # answer + end-of-turn token
    with torch.no_grad():
        ours = model.answer_loss(x, batch)
        for i in range(2):
            one = {k: v[i: i + 1] for k, v in batch.items()}
            inputs = {k: v for k, v in one.items() if k != "labels"}
            ref = model.model(**inputs, **model.pixel_inputs(x[i: i + 1]), labels=one["labels"], use_cache=False).loss
            torch.testing.assert_close(ours[i], ref.float(), rtol=1e-5, atol=1e-6)
        # the summed negative log-likelihood (used to rank candidate answers) is the mean times the token count
        n_tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1)
        torch.testing.assert_close(model.answer_loss(x, batch, reduction="sum"), ours * n_tokens, rtol=1e-5, atol=1e-5)
