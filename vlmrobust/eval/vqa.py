"""VQA accuracy and CIDEr, clean and under attack, for LVLMs (`evaluate_vqa`).

VQA accuracy is the official metric: with the official answer normalisation, a prediction scores
`min(1, #matching annotators / 3)` averaged over the 10 leave-one-annotator-out subsets of the references.
CIDEr needs the PTB tokenizer of `pycocoevalcap`, which runs Java: `cider_status()` says whether it can run here,
and `compute_cider` refuses plainly (it never substitutes another tokenizer, whose scores would not be comparable).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

import torch

from ..metrics import majority_answer, vqa_accuracy


# -- the evaluation loop ----------------------------------------------------------------------------------------------
def _answer(model, pixels, questions, mode: str, candidates, max_new_tokens: int) -> list[str]:
    if mode == "rank":
        return model.rank_answers(pixels, questions, candidates)
    return model.generate(pixels, questions, max_new_tokens=max_new_tokens)


def evaluate_vqa(model, dataset, epsilons: Sequence[float] = (2 / 255, 4 / 255), *, steps: int = 100,
                 norm: str = "Linf", batch_size: int = 16, answer_mode: str = "generate",
                 candidates: Sequence[str] | None = None, ensemble: bool = True, targets: Sequence[str] = (),
                 max_references: int | None = None, max_samples: int | None = None, max_new_tokens: int = 10,
                 seed: int = 0, desc: str = "vqa") -> dict:
    """VQA accuracy of an LVLM, clean and under APGD on the answer likelihood at each ε.

    Args:
        model (`LVLM`): a vlmrobust `llava` / `qwen_vl` model.
        dataset: items with `image` (or `pixel_values` in [0, 1] at the model's resolution), `question`, `answers`
            and optionally `question_type` (e.g. [`ShapesVQA`], [`VQAJsonDataset`]).
        epsilons (`Sequence[float]`, *optional*): budgets in [0, 1] pixel units; 0 entries are skipped (clean is
            always reported).
        steps (`int`, *optional*, defaults to 100): APGD iterations per run.
        norm (`str`, *optional*, defaults to `"Linf"`): threat model.
        batch_size (`int`, *optional*, defaults to 16): images per attack batch.
        answer_mode (`str`, *optional*, defaults to `"generate"`): `"generate"` = greedy decoding, or `"rank"` =
            closed-set answering, the candidate with the highest likelihood (steadier for tiny models).
        candidates (`Sequence[str]`, *optional*): the answer set for `"rank"`; defaults to
            `dataset.answer_candidates()`.
        ensemble (`bool`, *optional*, defaults to `True`): one untargeted run per distinct reference (+ one per
            `targets` string), worst case per image (the FARE paper's protocol); `False` = one untargeted run on
            the most frequent reference.
        targets (`Sequence[str]`, *optional*): strings for targeted runs in the ensemble.
        max_references (`int`, *optional*): cap on distinct references attacked per image.
        max_samples (`int`, *optional*): evaluate the first n items.
        max_new_tokens (`int`, *optional*, defaults to 10): generation length.
        seed (`int`, *optional*, defaults to 0): attack seed.
        desc (`str`, *optional*): name in the result.

    Returns:
        A JSON-able dict: `{"metric": "vqa_accuracy", "n", "clean", "robust": {"<eps>": acc}, "per_type":
        {type: {"clean", "<eps>"}}, "protocol": {...}, "seconds"}`; accuracies in [0, 1].
    """
    from ..attacks import check_budget
    from ..attacks.vlm import ensemble_attack

    if answer_mode not in ("generate", "rank"):
        raise ValueError(f"answer_mode must be 'generate' or 'rank', got {answer_mode!r}.")
    for e in epsilons:
        check_budget(norm, e)
    if answer_mode == "rank" and candidates is None:
        if not hasattr(dataset, "answer_candidates"):
            raise ValueError("answer_mode='rank' needs `candidates` (the closed answer set) for this dataset.")
        candidates = dataset.answer_candidates()
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    eps_list = [float(e) for e in epsilons if float(e) > 0]
    t0 = time.time()
    scores: dict[str, list[float]] = defaultdict(list)
    types: list[str] = []
    nonfinite: dict[str, int] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, n))]
            imgs = [it["pixel_values"] if "pixel_values" in it else model.preprocess(it["image"]) for it in items]
            pixels = torch.stack([torch.as_tensor(x) for x in imgs]).float().to(model.device)
            questions = [it["question"] for it in items]
            refs = [list(it["answers"]) for it in items]
            types += [it.get("question_type", "") or "all" for it in items]

            def score(x, idx, questions=questions, refs=refs):
                qs = [questions[i] for i in idx.tolist()]
                preds = _answer(model, x, qs, answer_mode, candidates, max_new_tokens)
                return torch.tensor([vqa_accuracy(p, refs[i]) for p, i in zip(preds, idx.tolist())])

            clean = score(pixels, torch.arange(len(items)))
            scores["clean"] += clean.tolist()
            for eps in eps_list:
                broken: list[int] = []
                if ensemble:
                    _, worst = ensemble_attack(model, pixels, questions, refs, eps=eps, score_fn=score, steps=steps,
                                               norm=norm, targets=targets, max_references=max_references, seed=seed,
                                               nonfinite_out=broken)
                else:
                    _, worst = ensemble_attack(model, pixels, questions, [[majority_answer(r)] for r in refs],
                                               eps=eps, score_fn=score, steps=steps, norm=norm, seed=seed,
                                               nonfinite_out=broken)
                scores[_key(eps)] += worst.tolist()
                nonfinite[_key(eps)] = nonfinite.get(_key(eps), 0) + len(broken)
    finally:
        model.train(was_training)
    per_type: dict[str, dict[str, float]] = {}
    for t in dict.fromkeys(types):
        mask = [i for i, x in enumerate(types) if x == t]
        per_type[t] = {k: round(sum(v[i] for i in mask) / len(mask), 4) for k, v in scores.items()}
    mean = {k: round(sum(v) / max(len(v), 1), 4) for k, v in scores.items()}
    warn_nonfinite(sum(nonfinite.values()), f"{desc} (VQA accuracy)")
    result = {
        "metric": "vqa_accuracy", "desc": desc, "n": n, "clean": mean["clean"],
        "robust": {k: v for k, v in mean.items() if k != "clean"}, "per_type": per_type,
        "protocol": {"attack": "apgd", "loss": "teacher-forced answer CE (prompt masked)", "steps": steps,
                     "norm": norm, "epsilons": eps_list, "ensemble": ensemble, "targets": list(targets),
                     "answer_mode": answer_mode, "seed": seed},
        "seconds": round(time.time() - t0, 1),
    }
    if any(nonfinite.values()):  # questions scored 0 because an attack run went NaN / Inf, per budget
        result["nonfinite"] = {k: v for k, v in nonfinite.items() if v}
    return result


def _key(eps: float) -> str:
    """'8/255'-style key for an L∞ budget that is a multiple of 1/255, else the float."""
    k = eps * 255
    return f"{round(k):g}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def warn_nonfinite(count: int, where: str, what: str = "questions") -> None:
    """One warning naming how many points an LVLM attack scored 0 because its loss or image went NaN / Inf."""
    if count:
        import warnings

        warnings.warn(f"{where}: the attack's loss or adversarial image was NaN / Inf for {count} {what}; each is "
                      "counted as broken (score 0), not robust. Check the model's numerics (dtype, overflow).",
                      RuntimeWarning, stacklevel=3)
