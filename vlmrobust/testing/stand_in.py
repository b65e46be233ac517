"""`vlmrobust:tiny-digits-clip` — the offline stand-in for a downloaded CLIP checkpoint.

Nothing can be downloaded here, so the quickstart needs a CLIP with a *real* zero-shot ability that can be made
locally: a tiny open_clip ViT (16 px input, patch 4, width 64, 2 vision + 2 text layers, embedding 64) trained
contrastively for a minute on scikit-learn's handwritten digits with captions such as "a photo of the digit seven."
It is saved in open_clip's layout and cached, so `create_model("vlmrobust:tiny-digits-clip")` builds it once.
It is a *stand-in*: the same recipes take `open_clip:ViT-B-32/openai` (or any other id) on real data.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..layout import OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME

TINY_DIGITS_NAME = "tiny-digits-clip"
TINY_DIGITS_VERSION = "v1"


def cache_dir() -> Path:
    return Path(os.environ.get("VLMROBUST_CACHE", Path.home() / ".cache" / "vlmrobust"))


def pretrain_tiny_digits_clip(output_dir: str | os.PathLike, *, steps: int = 800, batch_size: int = 128,
                              lr: float = 1e-3, seed: int = 0, image_size: int = 16, patch_size: int = 4,
                              width: int = 64, layers: int = 2, embed_dim: int = 64, context_length: int = 16,
                              progress: bool = True) -> Path:
    """Contrastively pre-train a tiny open_clip CLIP on the digits train split and save it (open_clip layout).

    Symmetric InfoNCE on (image, caption) pairs, captions drawn from the digits templates; AdamW with a cosine
    schedule. The test split is never seen, so zero-shot accuracy measured on it is honest.
    """
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from ..data import DIGITS_TEMPLATES, digits_captions, load_digits_splits
    from ..layout import save_open_clip
    from .tiny_clip import OPENAI_MEAN, OPENAI_STD, tiny_open_clip_config

    cfg = tiny_open_clip_config(image_size, patch_size, width, layers, embed_dim, context_length, heads=4)
    train, _ = load_digits_splits(image_size=image_size)
    tok = SimpleTokenizer(context_length=context_length)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**cfg)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05,
                                                    anneal_strategy="cos")
        model.train()
        t0 = time.time()
        bar = tqdm(range(steps), desc="pre-training the tiny digits CLIP (stand-in checkpoint)", disable=not progress,
                   dynamic_ncols=True)
        for _ in bar:
            idx = torch.randint(len(train), (batch_size,), generator=g)
            x = (train.images[idx] - mean) / std
            text = tok(digits_captions(train.labels[idx], DIGITS_TEMPLATES, generator=g))
            img_f, txt_f, scale = model(x, text)
            logits = scale * img_f @ txt_f.T
            # captions of the same digit are positives too: soft targets avoid punishing them as negatives
            same = (train.labels[idx][:, None] == train.labels[idx][None, :]).float()
            target = same / same.sum(1, keepdim=True)
            loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                          + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)
            if progress and _ % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
    preprocess_cfg = {"size": image_size, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                      "interpolation": "bilinear", "resize_mode": "shortest"}
    meta = {"note": "vlmrobust offline stand-in for a pretrained CLIP: tiny ViT contrastively trained on sklearn "
                    "digits (train split)", "pretrain": dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed),
            "pretrain_seconds": round(time.time() - t0, 1)}
    return save_open_clip(model, output_dir, cfg, preprocess_cfg, extra_config=meta)


def _remove_stale_builds(target: Path) -> None:
    """Remove temp build folders of `target` left by killed builds: their process is gone (and they are over a
    minute old), or they are over an hour old (a build takes about a minute; a shared cache may hold another
    host's)."""
    for p in target.parent.glob(f".{target.name}.*"):
        parts = p.name[len(target.name) + 2:].split(".")
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        try:
            age = time.time() - p.stat().st_mtime
        except OSError:
            continue
        dead = pid is not None and pid != os.getpid() and not _alive(pid)
        if age > 3600 or (dead and age > 60):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _TerminateAsInterrupt:
    """SIGTERM raises (instead of killing the process outright) while the stand-in is built, so the `finally`
    that removes the temp folder runs; only in the main thread, the previous handler restored after."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def raise_(signum, frame):
                raise SystemExit(128 + signum)

            self.previous = signal.signal(signal.SIGTERM, raise_)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def get_tiny_digits_clip(progress: bool = True, **overrides) -> Path:
    """Path of the cached stand-in checkpoint, pre-training it first when absent (atomic: built aside, renamed;
    a SIGTERM during the build removes the temp folder, and temp folders of killed builds are removed later)."""
    from ..utils.io import make_temp_dir

    target = cache_dir() / f"{TINY_DIGITS_NAME}-{TINY_DIGITS_VERSION}"
    if (target / OPEN_CLIP_WEIGHTS_NAME).is_file() and (target / OPEN_CLIP_CONFIG_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    with _TerminateAsInterrupt():
        tmp = make_temp_dir(target.parent, prefix=f".{target.name}.{os.getpid()}.")
        try:
            pretrain_tiny_digits_clip(tmp, progress=progress, **overrides)
            try:
                os.replace(tmp, target)
            except OSError:  # another process finished first
                if not (target / OPEN_CLIP_WEIGHTS_NAME).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
