"""VQA accuracy and CIDEr, clean and under attack, for LVLMs (`evaluate_vqa`).

VQA accuracy is the official metric: with the official answer normalisation, a prediction scores
`min(1, #matching annotators / 3)` averaged over the 10 leave-one-annotator-out subsets of the references.
CIDEr needs the PTB tokenizer of `pycocoevalcap`, which runs Java: `cider_status()` says whether it can run here,
and `compute_cider` refuses plainly (it never substitutes another tokenizer, whose scores would not be comparable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from ..data.vqa import normalize_answer, process_digit_article, process_punctuation


def vqa_accuracy(prediction: str, references: Sequence[str], strict_official: bool = False) -> float:
    """Official VQA accuracy of one prediction against its (usually 10) reference answers.

    Args:
        prediction (`str`): the model's answer.
        references (`Sequence[str]`): the annotators' answers.
        strict_official (`bool`, *optional*, defaults to `False`): reproduce the toolkit exactly, which normalises
            the references' punctuation only when they disagree (and never their digits / articles, since the
            released annotations are already normalised). By default both sides get the full normalisation.
    """
    if not references:
        raise ValueError("vqa_accuracy needs the reference answers (got none).")
    refs = [str(r).replace("\n", " ").replace("\t", " ").strip() for r in references]
    pred = str(prediction).replace("\n", " ").replace("\t", " ").strip()
    if strict_official:
        if len(set(refs)) > 1:
            refs = [process_punctuation(r) for r in refs]
            pred = process_digit_article(process_punctuation(pred))
    else:
        refs = [normalize_answer(r) for r in refs]
        pred = normalize_answer(pred)
    accs = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1:]
        accs.append(min(1.0, sum(r == pred for r in others) / 3.0))
    return sum(accs) / len(accs)


# -- CIDEr ------------------------------------------------------------------------------------------------------------
#: what to install, named in every "CIDEr unavailable" message
CIDER_INSTALL_HINT = ("pip install 'vlmrobust[caption]' (or pip install pycocoevalcap) for the scorer and the PTB "
                      "tokenizer jar, and a Java runtime on PATH (e.g. apt-get install default-jre-headless)")
_PTB_PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                     "...", ";"}


def _ptb_jar() -> str | None:
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError:
        return None
    jar = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)),
                       ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    return jar if os.path.isfile(jar) else None


def cider_status() -> tuple[bool, str]:
    """`(available, message)`: CIDEr needs `pycocoevalcap` (scorer + Stanford PTB tokenizer jar) and a Java runtime.

    The message says which of the two is missing (both when both are) and what to install; it is `"ok: ..."` when
    CIDEr can run.
    """
    missing = []
    try:
        import pycocoevalcap  # noqa: F401
        has_pkg = _ptb_jar() is not None
    except ImportError:
        has_pkg = False
    if not has_pkg:
        missing.append("the pycocoevalcap package (with its PTB tokenizer jar) is not installed")
    java = shutil.which("java")
    if java is None:
        missing.append("no Java runtime ('java') is on PATH, and the official PTB tokenizer is a Java program")
    if missing:
        return False, f"CIDEr unavailable: {'; '.join(missing)}. Install: {CIDER_INSTALL_HINT}."
    return True, f"ok: pycocoevalcap and Java ({java}) found"


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """The COCO caption toolkit's tokenisation: Stanford PTBTokenizer (`-preserveLines -lowerCase`, run with Java)
    with punctuation tokens dropped; exactly what `pycocoevalcap.tokenizer.PTBTokenizer` does, but fed on stdin (no
    temporary file inside site-packages) and with its log line kept off the console.

    Raises:
        RuntimeError: when CIDEr's dependencies are missing (see `cider_status`) or the tokenizer fails.
    """
    ok, reason = cider_status()
    if not ok:
        raise RuntimeError(reason)
    if not texts:
        return []
    lines = [str(t).replace("\r", " ").replace("\n", " ") for t in texts]
    cmd = ["java", "-cp", _ptb_jar(), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    proc = subprocess.run(cmd, input="\n".join(lines).encode(), capture_output=True, check=False)
    out = proc.stdout.decode().split("\n")
    if proc.returncode != 0 or len(out) < len(lines):
        raise RuntimeError(f"the PTB tokenizer failed (exit {proc.returncode}, {len(out)} lines for {len(lines)} "
                           f"captions): {proc.stderr.decode()[-500:]}")
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in _PTB_PUNCTUATIONS)
            for line in out[:len(lines)]]


class CorpusCider:
    """CIDEr-D (`pycocoevalcap`'s `Cider`: n = 1..4, σ = 6, clipped tf-idf, ×10 per image) against a fixed corpus
    of references, scoring any subset of the images.

    CIDEr-D's document frequencies (IDF) and its log corpus size come from the *references only*, so they are fixed
    once the image set is: a caption's per-image score does not depend on the other images' captions, and the corpus
    score is the mean of the per-image scores. This lets an attack pick, per image, the caption with the lowest
    per-image CIDEr, and the mean of those is exactly the corpus CIDEr of the selected captions.

    Args:
        references (`dict`): `{image id: [reference captions]}` (raw text; PTB-tokenised here).

    Scores are ×100 (the convention of the captioning papers: COCO CIDEr 0-~150).
    """

    def __init__(self, references: dict):
        from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs

        if not references:
            raise ValueError("CorpusCider needs at least one image with references.")
        self.ids = list(references)
        if any(not references[k] for k in self.ids):
            raise ValueError("every image needs at least one reference caption for CIDEr.")
        flat = [c for k in self.ids for c in references[k]]
        tok = iter(ptb_tokenize(flat))
        self.crefs = {k: cook_refs([next(tok) for _ in references[k]]) for k in self.ids}
        df_scorer = CiderScorer(n=4, sigma=6.0)
        df_scorer.crefs = list(self.crefs.values())
        df_scorer.compute_doc_freq()
        self.document_frequency = df_scorer.document_frequency
        self._scorer_cls = CiderScorer

    def score(self, ids: Sequence, captions: Sequence[str]) -> list[float]:
        """Per-image CIDEr-D ×100 of `captions[j]` for image `ids[j]` (corpus IDF)."""
        from pycocoevalcap.cider.cider_scorer import cook_test

        if len(ids) != len(captions):
            raise ValueError(f"{len(ids)} ids but {len(captions)} captions.")
        if not ids:
            return []
        s = self._scorer_cls(n=4, sigma=6.0)
        s.document_frequency = self.document_frequency
        s.ctest = [cook_test(c) for c in ptb_tokenize(captions)]
        # compute_cider() sets ref_len = log(len(crefs)), the corpus size: pad crefs to it (zip stops at ctest)
        s.crefs = [self.crefs[k] for k in ids] + [[]] * (len(self.ids) - len(ids))
        return [100.0 * float(v) for v in s.compute_cider()]

    def corpus(self, predictions: dict) -> float:
        """Corpus CIDEr-D ×100 of `{image id: caption}` over every image of the corpus."""
        return float(np.mean(self.score(self.ids, [predictions[k] for k in self.ids])))


def compute_cider(predictions: dict, references: dict, per_image: bool = False):
    """Corpus CIDEr-D ×100 of `{id: caption}` against `{id: [reference captions]}` (PTB-tokenised), as the COCO
    caption toolkit computes it (`PTBTokenizer` + `Cider`).

    Args:
        predictions (`dict`): one caption per image id of `references`.
        references (`dict`): the reference captions per image id.
        per_image (`bool`, *optional*, defaults to `False`): also return the per-image scores `{id: score}`.

    Raises:
        RuntimeError: when CIDEr cannot run here (see `cider_status`), naming what is missing and what to install.
    """
    ok, reason = cider_status()
    if not ok:
        raise RuntimeError(reason)
    missing = [k for k in references if k not in predictions]
    if missing:
        raise KeyError(f"no prediction for image id(s) {missing[:5]} of the references.")
    from pycocoevalcap.cider.cider import Cider

    ids = list(references)
    flat = ptb_tokenize([c for k in ids for c in references[k]] + [predictions[k] for k in ids])
    it = iter(flat)
    gts = {k: [next(it) for _ in references[k]] for k in ids}
    res = {k: [next(it)] for k in ids}
    score, scores = Cider().compute_score(gts, res)
    if per_image:
        return 100.0 * float(score), {k: 100.0 * float(v) for k, v in zip(ids, scores)}
    return 100.0 * float(score)


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
    from ..data.vqa import majority_answer

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
                if ensemble:
                    _, worst = ensemble_attack(model, pixels, questions, refs, eps=eps, score_fn=score, steps=steps,
                                               norm=norm, targets=targets, max_references=max_references, seed=seed)
                else:
                    _, worst = ensemble_attack(model, pixels, questions, [[majority_answer(r)] for r in refs],
                                               eps=eps, score_fn=score, steps=steps, norm=norm, seed=seed)
                scores[_key(eps)] += worst.tolist()
    finally:
        model.train(was_training)
    per_type: dict[str, dict[str, float]] = {}
    for t in dict.fromkeys(types):
        mask = [i for i, x in enumerate(types) if x == t]
        per_type[t] = {k: round(sum(v[i] for i in mask) / len(mask), 4) for k, v in scores.items()}
    mean = {k: round(sum(v) / max(len(v), 1), 4) for k, v in scores.items()}
    return {
        "metric": "vqa_accuracy", "desc": desc, "n": n, "clean": mean["clean"],
        "robust": {k: v for k, v in mean.items() if k != "clean"}, "per_type": per_type,
        "protocol": {"attack": "apgd", "loss": "teacher-forced answer CE (prompt masked)", "steps": steps,
                     "norm": norm, "epsilons": eps_list, "ensemble": ensemble, "targets": list(targets),
                     "answer_mode": answer_mode, "seed": seed},
        "seconds": round(time.time() - t0, 1),
    }


def _key(eps: float) -> str:
    """'8/255'-style key for an L∞ budget that is a multiple of 1/255, else the float."""
    k = eps * 255
    return f"{round(k):g}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"
