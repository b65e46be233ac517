"""Helpers of the VQA task: an adversarial *split* (images APGD-perturbed once, at load) and the record of the prompt
template and decoding setup that every VQA clean cell carries."""

from __future__ import annotations

from typing import Any

import torch

from ..schema import Ctx, eps_grid, parse_norm

_PERTURB_KEYS = {"eps", "steps", "norm", "seed"}


def parse_perturb(ctx: Ctx, raw: Any, where: str) -> dict | None:
    """`vqa.perturb: {eps, steps, norm, seed}` -> a plain dict (None: clean images)."""
    if raw is None or raw is False:
        return None
    raw = ctx.check_keys(raw, _PERTURB_KEYS, where)
    norm = parse_norm(ctx, raw, where)
    eps = eps_grid(ctx, raw.get("eps"), norm, where)
    if len(eps) != 1:
        raise ctx.fail(f"{where}.eps", "one budget: the split holds one perturbed copy of each image.")
    return {"eps": eps[0], "norm": norm, "steps": ctx.integer(raw.get("steps", 10), f"{where}.steps", lo=1),
            "seed": ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0)}


def perturb_split(data, model, cfg: dict, batch_size: int):
    """`data` with each item's `pixel_values` replaced by an APGD perturbation (untargeted, on the teacher-forced
    loss of the majority reference answer) against `model`: a white-box adversarial split, like AdVQA's
    model-in-the-loop questions but made by an attack."""
    from ...attacks.vlm import attack_answers
    from ...metrics import majority_answer

    out = _Perturbed(data)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(out), batch_size):
            items = out.items[start:start + batch_size]
            pixels = torch.stack([torch.as_tensor(it["pixel_values"] if "pixel_values" in it
                                                  else model.preprocess(it["image"])) for it in items]).float()
            res = attack_answers(model, pixels.to(model.device), [it["question"] for it in items],
                                 [majority_answer(it["answers"]) for it in items], eps=cfg["eps"],
                                 steps=cfg["steps"], norm=cfg["norm"], seed=cfg["seed"] + start)
            for it, x in zip(items, res.x_adv.detach().cpu()):
                it["pixel_values"] = x
    finally:
        model.train(was_training)
    return out


class _Perturbed(torch.utils.data.Dataset):
    """The items of a dataset, copied (to hold their perturbed pixels); other attributes are the dataset's own
    (`answer_candidates`, `chance_accuracy`)."""

    def __init__(self, data):
        self.data, self.items = data, [dict(data[i]) for i in range(len(data))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def __getattr__(self, name: str):
        if name in ("data", "items"):
            raise AttributeError(name)
        return getattr(self.data, name)


def decoding_record(model, vqa) -> dict:
    """The prompt template (the model's chat template around `{question}`) and decoding setup of a VQA cell."""
    try:
        template = model.prompt("{question}")
    except Exception:  # a stand-in model without a chat template
        template = None
    decoding = ({"mode": "rank", "scoring": "sum of answer-token NLL + end-of-turn, lowest wins"}
                if vqa.answer_mode == "rank" else
                {"mode": "generate", "greedy": True, "max_new_tokens": vqa.max_new_tokens})
    return {"prompt_template": template, "decoding": decoding}


__all__ = ["decoding_record", "parse_perturb", "perturb_split"]
