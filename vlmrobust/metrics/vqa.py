"""VQA answer normalisation and accuracy, as the official VQA evaluation toolkit (vqaEval.py) computes them.

VQA accuracy: with the official answer normalisation, a prediction scores `min(1, #matching annotators / 3)` averaged
over the 10 leave-one-annotator-out subsets of the references.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# -- official VQA answer normalisation (VQA evaluation toolkit, vqaEval.py) ------------------------------------------
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
               "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the toolkit's pattern, kept for identical results
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def process_punctuation(text: str) -> str:
    """The toolkit's `processPunctuation`."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    """The toolkit's `processDigitArticle`: lower-case, number words -> digits, drop articles, fix contractions."""
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """Official VQA answer normalisation: whitespace, punctuation, digits / articles, contractions."""
    answer = str(answer).replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


# -- collation with label masking -------------------------------------------------------------------------------------


def majority_answer(answers: Sequence[str]) -> str:
    """Most frequent reference answer after normalisation (ties: first seen); the training target."""
    norm = [normalize_answer(a) for a in answers]
    best = Counter(norm).most_common(1)[0][0]
    return answers[norm.index(best)]


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
