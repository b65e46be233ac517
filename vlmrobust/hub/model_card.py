"""Model cards (README.md with Hub metadata) that carry a checkpoint's robustness results."""

from __future__ import annotations

import os
from pathlib import Path

from .. import __version__
from ..utils.io import atomic_write_text

_LIBRARY = {"open_clip": "open_clip", "hf-clip": "transformers"}

_LOADING = {
    "open_clip": """```python
import open_clip  # no vlmrobust needed
model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:{repo}")
tokenizer = open_clip.get_tokenizer("hf-hub:{repo}")
```""",
    "hf-clip": """```python
from transformers import CLIPModel, CLIPProcessor  # no vlmrobust needed
model = CLIPModel.from_pretrained("{repo}")
processor = CLIPProcessor.from_pretrained("{repo}")
```""",
}


def write_model_card(output_dir: str | os.PathLike, *, backend: str, base_model: str, method: str,
                     results_markdown: str, training: dict, repo_id: str | None = None, notes: str = "") -> Path:
    """Write `README.md` in `output_dir`: Hub metadata, how to load with the backend's own library, results.

    Args:
        output_dir (`str`): checkpoint folder.
        backend (`str`): `"open_clip"` or `"hf-clip"` (decides `library_name` and the loading snippet).
        base_model (`str`): the `create_model` id training started from.
        method (`str`): e.g. `"fare"`.
        results_markdown (`str`): markdown table(s) of the evaluation.
        training (`dict`): the settings worth stating (ε, norm, attack, steps, ...).
        repo_id (`str`, *optional*): Hub repo the card will live in (used in the loading snippet).
    """
    repo = repo_id or Path(output_dir).name
    base = base_model.split(":", 1)[-1]
    meta = ["---", f"library_name: {_LIBRARY.get(backend, backend)}", "tags:", "- vlmrobust",
            "- adversarial-robustness", f"- {method}", "- clip"]
    if not base_model.startswith(("local-dir:", "vlmrobust:")):
        meta.append(f"base_model: {base.split('/')[0] if base_model.startswith('open_clip:') else base}")
    meta += ["---", ""]
    lines = [f"# {repo}", "",
             f"A {method.upper()} adversarially fine-tuned CLIP made with vlmrobust {__version__}, starting from "
             f"`{base_model}`.", ""]
    if notes:
        lines += [notes, ""]
    lines += ["## Loading", "", _LOADING.get(backend, "Load with `vlmrobust.create_model`.").format(repo=repo), "",
              "## Training", ""]
    lines += [f"- **{k}**: {v}" for k, v in training.items()]
    lines += ["", "## Robustness", "", results_markdown, ""]
    return atomic_write_text(Path(output_dir) / "README.md", "\n".join(meta + lines))
