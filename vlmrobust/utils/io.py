"""Atomic file writes: a killed run never leaves a half-written checkpoint or result file behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_target(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; give the final file the permissions a plain open() would (0666 minus the umask)
    os.chmod(tmp, 0o666 & ~_umask())
    return path, tmp


def _umask() -> int:
    # Read, not set-and-restore: os.umask() changes process-wide state under other threads' feet.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


@contextlib.contextmanager
def _atomic(path: str | os.PathLike):
    """Yield a temporary file beside `path`; on success it replaces `path` (with the umask's mode), on any error it
    is removed and `path` is left as it was. An `OSError` (a full disk, ...) is re-raised naming `path`."""
    path, tmp = _atomic_target(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) re-create the file as 0600
        os.replace(tmp, path)
    except OSError as err:
        if str(path) in str(err):
            raise
        raise OSError(err.errno, f"{err.strerror or err} while writing {path} (the previous file, if any, is "
                                 "unchanged)") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file and `os.replace`."""
    with _atomic(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
    from safetensors.torch import save_file

    # safetensors refuses shared / non-contiguous storage: store independent contiguous copies
    clean = {k: v.detach().contiguous().clone() if _shares(v, tensors) else v.detach().contiguous()
             for k, v in tensors.items()}
    with _atomic(path) as tmp:
        save_file(clean, tmp, metadata=metadata)
    return Path(path)


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    with _atomic(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    return Path(path)


def umask_modes(folder: str | os.PathLike) -> None:
    """Give the files right in `folder` the mode a plain `open()` gives (0666 minus the umask): libraries that
    save through private temp files (safetensors: 0600) differ otherwise."""
    want = 0o666 & ~_umask()
    for p in [p for p in Path(folder).iterdir() if p.is_file() and not p.is_symlink()]:
        try:
            if (p.stat().st_mode & 0o777) != want:
                os.chmod(p, want)
        except OSError:  # not ours to change (a shared folder): leave it
            pass


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """`tempfile.mkdtemp` with the mode a plain `mkdir` gives (mkdtemp makes 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise a `ValueError` naming `path` when it is not a readable safetensors file (truncated, corrupt)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # SafetensorsError, OSError, ...: the library's message does not name the file
        raise ValueError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); re-save or re-download "
                         "it.") from None


def _shares(t: torch.Tensor, tensors: dict[str, torch.Tensor]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return sum(1 for v in tensors.values() if v.untyped_storage().data_ptr() == ptr) > 1


def _json_default(o: Any):
    if torch.is_tensor(o):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serialisable")
