"""What the README claims about supported backends matches the registries (issue 10, defect 7)."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
#: how the README names each backend
DISPLAY = {"open_clip": "open_clip", "hf-clip": "transformers", "llava": "LLaVA", "qwen_vl": "Qwen-VL"}


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


def test_readme_does_not_call_radapt_backends_unsupported():
    """Every backend with an R-Adapt `AnchorAdapter` works; no sentence of the README's R-Adapt section (or of the
    R-Adapt recipe's docstring) may say it is not supported."""
    from vlmrobust.models.radapt import ANCHOR_ADAPTERS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## R-Adapt", 1)[1].split("\n## ", 1)[0]
    recipe = (ROOT / "recipes" / "radapt_clip.py").read_text(encoding="utf-8").split('"""')[1]
    supported = [DISPLAY.get(b, b) for b in ANCHOR_ADAPTERS.names()]
    assert {"LLaVA", "Qwen-VL"} <= set(supported)
    for where, text in (("README.md R-Adapt section", section), ("recipes/radapt_clip.py", recipe)):
        for s in _sentences(text):
            if re.search(r"not (yet )?supported|unsupported|not support", s, flags=re.I):
                named = [b for b in supported if b in s]
                assert not named, f"{where} says {named} are unsupported: {s!r}"
    assert "LLaVA" in section and "Qwen-VL" in section  # and says how to use them
