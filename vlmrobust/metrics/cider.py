"""CIDEr-D as the COCO caption toolkit computes it: Stanford PTB tokenizer (Java) + `pycocoevalcap`'s scorer.

`cider_status()` says whether it can run here, and `compute_cider` refuses plainly (it never substitutes another
tokenizer, whose scores would not be comparable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np

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
