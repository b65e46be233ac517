"""Captioning CIDEr of LVLMs, clean and under attack (`evaluate_captioning`; RobustVLM / FARE protocol).

Clean: greedy captions, corpus CIDEr-D (PTB tokenizer + `pycocoevalcap`'s `Cider`, ×100) against the references.

Under attack (per ε): APGD on the image maximising the teacher-forced cross-entropy of one reference caption
(prompt and image tokens masked), one run per reference caption (up to `n_references`, most frequent first), and per
image the adversarial image whose greedy caption has the lowest CIDEr is kept (the worst case; images already at
CIDEr 0 are not attacked again).

Choosing the worst case per image needs a per-image score, and CIDEr is a corpus metric. CIDEr-D's IDF (document
frequencies and log corpus size) comes from the *references* of the evaluated image set only — never from the
captions — so each image is scored against the IDF of the whole evaluated set (the same IDF the clean run uses),
and the reported robust CIDEr, the mean of the selected per-image scores, is exactly the corpus CIDEr of the selected
captions (see `CorpusCider`).

CIDEr needs Java (for the PTB tokenizer) and `pycocoevalcap`: without them `evaluate_captioning` returns
`cider_available: False` with a plain message naming what to install, and computes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..metrics import CorpusCider, cider_status
from .vqa import _key, warn_nonfinite


def caption_scores(model, scorer: CorpusCider, pixels: torch.Tensor, prompts: Sequence[str], ids: Sequence,
                   max_new_tokens: int) -> tuple[list[float], list[str]]:
    """Greedy captions of `pixels` and their per-image CIDEr (corpus IDF of `scorer`)."""
    with torch.no_grad():
        caps = model.generate(pixels, list(prompts), max_new_tokens=max_new_tokens)
    return scorer.score(list(ids), caps), caps


def attack_captions(model, scorer: CorpusCider, pixels: torch.Tensor, prompts: Sequence[str],
                    references: Sequence[Sequence[str]], ids: Sequence, *, eps: float, steps: int = 100,
                    norm: str = "Linf", n_references: int | None = 5, seed: int = 0, max_new_tokens: int = 20,
                    start: tuple[Sequence[float], Sequence[str]] | None = None,
                    nonfinite_out: list[int] | None = None) -> tuple[list[float], list[str]]:
    """The ensemble attack on one batch: per image the lowest CIDEr (and its caption) over the clean image and one
    APGD run per reference caption (at most `n_references`).

    Args:
        model (`LVLM`): the model.
        scorer (`CorpusCider`): references of the whole evaluated set (the IDF).
        pixels (`torch.Tensor`): `(B, 3, H, W)` images in [0, 1] at the model's resolution.
        prompts (`Sequence[str]`): the captioning instruction per image.
        references (`Sequence[Sequence[str]]`): reference captions per image (the attacked strings).
        ids (`Sequence`): the images' ids in `scorer`.
        eps, steps, norm, seed: APGD settings (see `attack_answers`).
        n_references (`int`, *optional*, defaults to 5): distinct references attacked per image (`None`: all).
        max_new_tokens (`int`, *optional*, defaults to 20): caption length.
        start (`tuple`, *optional*): scores and captions to start from (e.g. a smaller ε's worst case, whose images
            lie in this ball too); defaults to the clean captions.
        nonfinite_out (`list[int]`, *optional*): receives the batch positions of images where an APGD run met a
            NaN / Inf loss or image; those score 0 with an empty caption (see `ensemble_attack`).

    Returns:
        `(scores, captions)`: the per-image worst CIDEr ×100 and the caption that scored it.
    """
    from ..attacks.vlm import ensemble_attack

    ids = list(ids)
    best_caps: list[str] = []
    best_sc: list[float] = []

    def score(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        pos = idx.tolist()
        sc, caps = caption_scores(model, scorer, x, [prompts[i] for i in pos], [ids[i] for i in pos], max_new_tokens)
        sc = torch.tensor(sc, dtype=torch.float32).tolist()  # compare in float32, like ensemble_attack does
        if not best_caps:  # the first call is on the clean batch (ensemble_attack's starting point)
            best_sc.extend(sc)
            best_caps.extend(caps)
            if start is not None:
                for i, (s0, c0) in enumerate(zip(*start)):
                    s0 = float(torch.tensor(s0, dtype=torch.float32))
                    if s0 < best_sc[i]:
                        best_sc[i], best_caps[i] = s0, c0
            return torch.tensor(best_sc)
        for j, i in enumerate(pos):  # same rule as ensemble_attack: keep strictly lower scores
            if sc[j] < best_sc[i]:
                best_sc[i], best_caps[i] = sc[j], caps[j]
        return torch.tensor(sc)

    broken: list[int] = []
    _, worst = ensemble_attack(model, pixels, list(prompts), [list(r) for r in references], eps=eps, score_fn=score,
                               steps=steps, norm=norm, max_references=n_references, seed=seed, nonfinite_out=broken)
    for i in broken:  # the ensemble scored these 0 (a non-finite run): no caption stands for that score
        if best_sc[i] > 0:
            best_sc[i], best_caps[i] = 0.0, ""
    if nonfinite_out is not None:
        nonfinite_out.extend(broken)
    out = [float(v) for v in worst.tolist()]
    if any(abs(a - b) > 1e-3 for a, b in zip(out, best_sc)):  # bookkeeping check: both follow the same rule
        raise RuntimeError("caption bookkeeping diverged from the ensemble's worst case.")
    return out, best_caps


def evaluate_captioning(model, dataset, epsilons: Sequence[float] = (2 / 255, 4 / 255), *, steps: int = 100,
                        n_references: int | None = 5, seed: int = 0, max_new_tokens: int = 20, norm: str = "Linf",
                        batch_size: int = 16, max_samples: int | None = None, prompt: str | None = None,
                        desc: str = "caption") -> dict:
    """Corpus CIDEr of an LVLM's greedy captions, clean and under the ensemble APGD attack at each ε.

    Args:
        model (`LVLM`): a vlmrobust `llava` / `qwen_vl` model.
        dataset: items with `image` (or `pixel_values` in [0, 1]), `answers` (the reference captions), optionally
            `question` (the captioning prompt) and `question_id` (e.g. [`CaptionJsonDataset`], [`ShapesCaptions`]).
            The evaluated images are a fixed subset: the first `max_samples`.
        epsilons (`Sequence[float]`, *optional*): budgets in [0, 1] pixel units (0 entries skipped); ascending
            order lets each ε start from the previous ε's worst case (it lies in the larger ball too).
        steps (`int`, *optional*, defaults to 100): APGD iterations per run.
        n_references (`int`, *optional*, defaults to 5): runs per image, one per (distinct) reference caption.
        seed (`int`, *optional*, defaults to 0): attack seed (run k uses seed + k).
        max_new_tokens (`int`, *optional*, defaults to 20): caption length.
        norm (`str`, *optional*, defaults to `"Linf"`): threat model.
        batch_size (`int`, *optional*, defaults to 16): images per batch.
        max_samples (`int`, *optional*): evaluate the first n images.
        prompt (`str`, *optional*): captioning instruction overriding the items' `question`.
        desc (`str`, *optional*): name in the result.

    Returns:
        A JSON-able dict: `{"metric": "cider", "desc", "n_images", "cider_available", "message", "clean",
        "robust": {"<eps>": cider}, "per_image": {"clean": [...], "<eps>": [...]}, "captions": {...}, "protocol",
        "seconds"}`; CIDEr ×100. When CIDEr cannot run, `cider_available` is False, `clean` None and `message` says
        what to install.
    """
    from ..attacks import check_budget

    for e in epsilons:
        check_budget(norm, e)
    eps_list = sorted(float(e) for e in epsilons if float(e) > 0)
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    protocol = {"attack": "apgd", "loss": "teacher-forced reference-caption CE (prompt masked)", "steps": steps,
                "norm": norm, "epsilons": eps_list, "n_references": n_references, "selection":
                "per image the lowest CIDEr (corpus IDF of the references), over the clean image and every run",
                "max_new_tokens": max_new_tokens, "seed": seed}
    ok, message = cider_status()
    result = {"metric": "cider", "desc": desc, "n_images": n, "cider_available": ok, "message": message,
              "clean": None, "robust": {}, "per_image": {}, "captions": {}, "protocol": protocol}
    if not ok:
        return result
    t0 = time.time()
    items = [dataset[i] for i in range(n)]
    ids = list(range(n))  # positions, not dataset ids: ids may repeat across splits
    refs = [list(it["answers"]) for it in items]
    if any(not r for r in refs):
        raise ValueError("every image needs reference captions for CIDEr (some have none).")
    prompts = [prompt or it.get("question") or "Provide a short caption for this image." for it in items]
    scorer = CorpusCider(dict(zip(ids, refs)))
    was_training = model.training
    model.eval()
    per: dict[str, list[float]] = {"clean": []}
    caps: dict[str, list[str]] = {"clean": []}
    nonfinite: dict[str, int] = {}
    try:
        for s in range(0, n, batch_size):
            b = list(range(s, min(s + batch_size, n)))
            imgs = [items[i]["pixel_values"] if "pixel_values" in items[i] else model.preprocess(items[i]["image"])
                    for i in b]
            pixels = torch.stack([torch.as_tensor(x) for x in imgs]).float().to(model.device)
            sc, cp = caption_scores(model, scorer, pixels, [prompts[i] for i in b], b, max_new_tokens)
            per["clean"] += sc
            caps["clean"] += cp
            prev = (sc, cp)
            for eps in eps_list:
                broken: list[int] = []
                sc_e, cp_e = attack_captions(model, scorer, pixels, [prompts[i] for i in b], [refs[i] for i in b], b,
                                             eps=eps, steps=steps, norm=norm, n_references=n_references, seed=seed,
                                             max_new_tokens=max_new_tokens, start=prev, nonfinite_out=broken)
                nonfinite[_key(eps)] = nonfinite.get(_key(eps), 0) + len(broken)
                per.setdefault(_key(eps), []).extend(sc_e)
                caps.setdefault(_key(eps), []).extend(cp_e)
                prev = (sc_e, cp_e)
    finally:
        model.train(was_training)
    mean = {k: round(sum(v) / max(len(v), 1), 4) for k, v in per.items()}
    result.update(clean=mean["clean"], robust={k: v for k, v in mean.items() if k != "clean"},
                  per_image={k: [round(x, 4) for x in v] for k, v in per.items()}, captions=caps,
                  seconds=round(time.time() - t0, 1))
    if any(nonfinite.values()):  # images scored 0 because an attack run went NaN / Inf, per budget
        result["nonfinite"] = {k: v for k, v in nonfinite.items() if v}
    warn_nonfinite(sum(nonfinite.values()), f"{desc} (CIDEr)", "images")
    return result



__all__ = ["attack_captions", "caption_scores", "evaluate_captioning"]
