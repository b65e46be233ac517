"""Mahalanobis shift analysis (FRAMES-VQA, seed 004): how far each evaluated set lies from the ID training data in an
embedding space, per sample and per dataset, and how that relates to accuracy.

* One Gaussian is fitted on the embeddings `Z` (n × d) of the ID *training* questions: `μ = mean(Z)`, the unbiased
  covariance `Σ = (Z − μ)ᵀ(Z − μ) / (n − 1)`, and `P = pinv(Σ + ridge·I)` (ridge 1e-8: `Σ` is singular whenever
  n ≤ d, and then the pseudo-inverse scores only the directions the ID data spans).
* A sample's shift score is `s(z) = −sqrt((z − μ)ᵀ P (z − μ))` (higher = closer to ID); a dataset's is the mean.
* Embeddings: a uni-modal image encoder (any transformers vision model id: mean over its last-layer tokens), a
  uni-modal text encoder (any transformers text model id: attention-masked mean) and the VLM itself: `vlm-image`
  (decoder input at the image tokens, i.e. the projected image features, mean over image tokens), `vlm-question`
  (last layer, image tokens and padding masked out, mean) and `vlm-joint` (last layer, the average of the image-token
  mean and the text-token mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: the three embeddings taken from the VLM itself
VLM_KINDS = ("vlm-image", "vlm-question", "vlm-joint")


# -- the Gaussian -----------------------------------------------------------------------------------------------------
def fit_gaussian(z: np.ndarray, ridge: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """`(μ, P)` of ID training embeddings `z` (n × d, n ≥ 2): mean and `pinv(Σ + ridge·I)` of the unbiased `Σ`."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"fit_gaussian needs an (n, d) array with n >= 2, got shape {z.shape}.")
    mu = z.mean(0)
    cov = np.cov(z, rowvar=False, ddof=1).reshape(z.shape[1], z.shape[1])
    return mu, np.linalg.pinv(cov + ridge * np.eye(z.shape[1]), hermitian=True)


def mahalanobis_scores(z: np.ndarray, mu: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Per-sample shift score `−sqrt((z − μ)ᵀ P (z − μ))` (n,), in float64 (tiny negative quadratic forms from
    round-off count as 0)."""
    d = np.asarray(z, dtype=np.float64) - mu
    q = np.einsum("nd,de,ne->n", d, precision, d)
    return -np.sqrt(np.clip(q, 0.0, None))


# -- correlations (numpy only) ----------------------------------------------------------------------------------------
def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r (None for fewer than 3 points or a constant series)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's ρ: Pearson's r of the (tie-averaged) ranks."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return None
    return pearson(_ranks(x), _ranks(y))


# -- embeddings -------------------------------------------------------------------------------------------------------
def _pixels(items: list[dict], preprocess) -> torch.Tensor:
    return torch.stack([torch.as_tensor(it["pixel_values"] if "pixel_values" in it else preprocess(it["image"]))
                        for it in items]).float()


@torch.no_grad()
def vlm_embeddings(model, items: list[dict]) -> dict[str, np.ndarray]:
    """`VLM_KINDS` embeddings of VQA items (`pixel_values` or `image`, `question`) from an LVLM (one forward)."""
    pixels = _pixels(items, model.preprocess).to(model.device)
    batch = model.build_batch([it["question"] for it in items], image_hw=tuple(pixels.shape[-2:]))
    inputs = {k: v.to(model.device) for k, v in batch.items()}
    out = model.model(**inputs, **model.pixel_inputs(pixels), output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    image = (ids == model.tokenizer.convert_tokens_to_ids(model.image_token)) & mask
    text = mask & ~image

    def mean(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        m = m.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    first, last = hidden[0].float(), hidden[-1].float()
    img_last, txt_last = mean(last, image), mean(last, text)
    return {"vlm-image": mean(first, image).cpu().numpy(), "vlm-question": txt_last.cpu().numpy(),
            "vlm-joint": ((img_last + txt_last) / 2).cpu().numpy()}


class HFEncoder:
    """A uni-modal transformers encoder: `image:<model id or folder>` (a vision model: mean over last-layer tokens)
    or `text:<model id or folder>` (a text model: attention-masked mean). A CLIP-like id gives its vision or text
    tower.

    Args:
        spec (`str`): `"image:<id>"` or `"text:<id>"`.
        device (`str` or `torch.device`, *optional*): where to run it.
    """

    def __init__(self, spec: str, device: str | torch.device | None = None):
        from transformers import AutoModel

        self.modality, sep, self.model_id = spec.partition(":")
        if not sep or self.modality not in ("image", "text") or not self.model_id:
            raise ValueError(f"encoder {spec!r}: write image:<transformers model id> or text:<model id>.")
        model = AutoModel.from_pretrained(self.model_id)
        tower = f"{'vision' if self.modality == 'image' else 'text'}_model"
        self.model = getattr(model, tower, model).to(device or "cpu").eval()
        if self.modality == "image":
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(self.model_id)
        else:
            from transformers import AutoTokenizer

            self.processor = AutoTokenizer.from_pretrained(self.model_id)

    @torch.no_grad()
    def __call__(self, items: list[dict], preprocess=None) -> np.ndarray:
        dev = next(self.model.parameters()).device
        if self.modality == "image":
            pixels = _pixels(items, preprocess)  # the evaluated pixels (perturbed ones included), in [0, 1]
            inputs = self.processor(images=list(pixels), do_rescale=False, return_tensors="pt")
            h = self.model(pixel_values=inputs["pixel_values"].to(dev)).last_hidden_state.float()
            return h.mean(1).cpu().numpy()
        enc = self.processor([it["question"] for it in items], padding=True, truncation=True, return_tensors="pt")
        enc = {k: v.to(dev) for k, v in enc.items()}
        h = self.model(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        return ((h * m).sum(1) / m.sum(1).clamp_min(1)).cpu().numpy()


__all__ = ["HFEncoder", "VLM_KINDS", "fit_gaussian", "mahalanobis_scores", "pearson", "spearman", "vlm_embeddings"]
