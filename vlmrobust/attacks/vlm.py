"""Attacks on generated answers / captions of LVLMs (RobustVLM protocol, Schlarmann et al., arXiv 2402.12336).

APGD on the image maximising the teacher-forced cross-entropy of the reference answer (prompt and image tokens
masked, see `LVLM.build_batch`), or — targeted — minimising the cross-entropy of a chosen string. The ensemble
protocol runs one attack per reference answer (and per target string) and keeps, per image, the worst case under
the final metric (e.g. VQA accuracy of the model's answer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .apgd import APGD
from .base import AttackResult


class AnswerLoss:
    """Images -> per-sample teacher-forced CE of `batch`'s labels (the "model" APGD attacks).

    Args:
        model (`LVLM`): a vlmrobust LLaVA / Qwen-VL.
        batch (`dict`): from `model.build_batch(questions, answers)`.
        targeted (`bool`, *optional*, defaults to `False`): return −CE, so maximising it forces the string.
    """

    def __init__(self, model, batch: dict[str, Tensor], targeted: bool = False):
        self.model = model
        self.batch = batch
        self.sign = -1.0 if targeted else 1.0
        #: per sample of the full batch: some evaluated loss was NaN / Inf (set on the first call; on the loss's
        #: device, read once after the attack)
        self.nonfinite: Tensor | None = None

    def __call__(self, pixels: Tensor) -> Tensor:
        loss = self.sign * self.model.answer_loss(pixels, self.batch)
        if loss.dim() == 0:  # not per sample: nothing to attribute
            return loss
        bad = ~torch.isfinite(loss.detach()).reshape(loss.shape[0], -1).all(dim=1)  # on device: no host sync
        if self.nonfinite is None:
            self.nonfinite = bad
        elif bad.shape == self.nonfinite.shape:  # APGD evaluates the whole batch (no per-sample early stop here)
            self.nonfinite |= bad
        return loss


def _identity_loss(out: Tensor, target: Tensor) -> Tensor:
    return out


def attack_answers(model, pixels: Tensor, questions: Sequence[str], answers: Sequence[str], *, eps: float,
                   steps: int = 100, norm: str = "Linf", targeted: bool = False, seed: int = 0,
                   random_start: bool = False) -> AttackResult:
    """APGD on the images against the likelihood of `answers`.

    Args:
        model (`LVLM`): the model (any vlmrobust `llava` / `qwen_vl` backend).
        pixels (`torch.Tensor`): `(B, 3, H, W)` images in [0, 1] at the model's resolution (`model.preprocess`).
        questions (`Sequence[str]`): one question (or captioning prompt) per image.
        answers (`Sequence[str]`): untargeted: the reference answer / caption whose CE is maximised; targeted: the
            string to force (its CE is minimised).
        eps (`float`): budget in [0, 1] pixel units (8/255, not 8).
        steps (`int`, *optional*, defaults to 100): APGD iterations (the RobustVLM protocol uses 100).
        norm (`str`, *optional*, defaults to `"Linf"`): `"Linf"` or `"L2"`.
        targeted (`bool`, *optional*, defaults to `False`): force `answers` instead of suppressing them.
        seed (`int`, *optional*, defaults to 0): seed of APGD's random start.
        random_start (`bool`, *optional*, defaults to `False`): start inside the ball instead of at the clean image.

    Returns:
        `AttackResult`: `x_max_loss` holds the images with the highest (untargeted) / lowest (targeted) CE found;
        `loss` is that CE (sign restored, so it is always the plain cross-entropy). Its extra attribute `nonfinite`
        (bool `[B]`, CPU) marks the images for which some evaluated loss, the loss returned or the adversarial
        image was NaN / Inf: the attack's outcome there is unknown, and [`ensemble_attack`] scores them 0.
    """
    batch = model.build_batch(list(questions), list(answers), image_hw=tuple(pixels.shape[-2:]))
    fn = AnswerLoss(model, batch, targeted=targeted)
    dummy = torch.zeros(pixels.shape[0], device=pixels.device)  # a float target: APGD keeps the max-loss point
    atk = APGD(fn, norm=norm, eps=eps, steps=steps, loss_fn=_identity_loss, seed=seed, random_start=random_start,
               early_stop=False, input_dtype=torch.float32)
    res = atk.perturb(pixels, dummy)
    res.loss = res.loss * fn.sign
    res.x_adv = res.x_max_loss
    bad = fn.nonfinite.cpu() if fn.nonfinite is not None else torch.zeros(pixels.shape[0], dtype=torch.bool)
    bad = bad | ~torch.isfinite(res.loss.detach()).cpu()
    bad = bad | ~torch.isfinite(res.x_adv.detach()).reshape(pixels.shape[0], -1).all(dim=1).cpu()
    res.nonfinite = bad
    return res


def ensemble_attack(model, pixels: Tensor, questions: Sequence[str], references: Sequence[Sequence[str]], *,
                    eps: float, score_fn: Callable[[Tensor, Tensor], Tensor], steps: int = 100, norm: str = "Linf",
                    targets: Sequence[str] = (), max_references: int | None = None, seed: int = 0,
                    floor: float | None = 0.0, nonfinite_out: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """The FARE paper's ensemble: one untargeted run per distinct reference answer, one targeted run per target
    string, and per image the adversarial image with the lowest score (the worst case).

    Args:
        model (`LVLM`): the model.
        pixels (`torch.Tensor`): `(B, 3, H, W)` images in [0, 1].
        questions (`Sequence[str]`): one question per image.
        references (`Sequence[Sequence[str]]`): each image's reference answers; duplicates (after the official
            normalisation) are attacked once, most frequent first.
        eps (`float`): budget in [0, 1] pixel units.
        score_fn (`Callable[[Tensor, Tensor], Tensor]`): `(images, indices)` -> per-image score to minimise (e.g.
            VQA accuracy of the model's answer), where `indices` are the positions of `images` in the batch;
            evaluated on the clean images and after each run.
        steps, norm, seed: as in [`attack_answers`].
        targets (`Sequence[str]`, *optional*): strings to force with targeted runs (e.g. "maybe", "I don't know").
        max_references (`int`, *optional*): attack at most this many distinct references per image.
        floor (`float`, *optional*, defaults to 0.0): the lowest possible score (0 for an accuracy); images already
            at it are not attacked again. `None` attacks every image in every run.
        nonfinite_out (`list[int]`, *optional*): receives the batch positions of the images where a run met a NaN /
            Inf loss or adversarial image. Such an image counts as broken, as the classification attacks count it:
            its score is 0 (the run's outcome is unknown, so it is never counted robust) and it is not scored on the
            non-finite image (its kept image is the clean one). The caller reports how many.

    Returns:
        `(x_worst, score_worst)`: per image, the worst images found and their scores.
    """
    from collections import Counter

    from ..metrics import normalize_answer

    best_x = pixels.detach().clone()
    broken = torch.zeros(len(questions), dtype=torch.bool)
    best_score = score_fn(best_x, torch.arange(len(questions))).detach().float().cpu()
    distinct = []
    for refs in references:
        counts = Counter(normalize_answer(r) for r in refs)
        first = {}
        for r in refs:
            first.setdefault(normalize_answer(r), r)
        distinct.append([first[n] for n, _ in counts.most_common(max_references)])
    rounds = max((len(d) for d in distinct), default=0)
    runs = [(False, [d[min(k, len(d) - 1)] for d in distinct], k) for k in range(rounds)]
    runs += [(True, [t] * len(questions), rounds + j) for j, t in enumerate(targets)]
    for targeted, strings, k in runs:
        if not targeted:  # images with fewer distinct references repeat their last one: skip those repeats
            active = torch.tensor([k < len(d) for d in distinct])
        else:
            active = torch.ones(len(questions), dtype=torch.bool)
        if floor is not None:
            active &= best_score > floor  # already fooled: nothing left to gain
        if not active.any():
            continue
        idx = active.nonzero().flatten()
        sub_q = [questions[i] for i in idx.tolist()]
        sub_s = [strings[i] for i in idx.tolist()]
        sub_x = pixels[idx.to(pixels.device)]
        res = attack_answers(model, sub_x, sub_q, sub_s, eps=eps, steps=steps, norm=norm,
                             targeted=targeted, seed=seed + k)
        bad = res.nonfinite
        x_adv = res.x_adv
        if bad.any():  # score a finite stand-in (the clean image), then count the image as broken
            x_adv = torch.where(bad.to(x_adv.device).view(-1, *([1] * (x_adv.dim() - 1))), sub_x, x_adv)
            broken[idx[bad]] = True
        score = score_fn(x_adv, idx).detach().float().cpu()
        score[bad] = 0.0
        better = score < best_score[idx]
        upd = idx[better]
        best_x[upd.to(best_x.device)] = x_adv[better.to(x_adv.device)]
        best_score[upd] = score[better]
    best_score[broken] = torch.clamp(best_score[broken], max=0.0)
    if nonfinite_out is not None:
        nonfinite_out.extend(broken.nonzero().flatten().tolist())
    return best_x, best_score
