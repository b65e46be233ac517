"""`RAdaptModel` / `RAdaptLVLM`: a frozen model with R-Adapt's filter and anchor; save / load (`radapt:` backend)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ... import __version__
from ...layout import RADAPT_CONFIG_NAME, RADAPT_WEIGHTS_NAME
from ..base import VisionLanguageModel
from ..factory import create_model
from ..lvlm_base import LVLM
from .adapters import Grid, adapter_for, block1_attention_output, grid_key, model_id
from .encoder import RAdaptImageEncoder
from .settings import RAdaptSettings


class RAdaptModel(VisionLanguageModel):
    """A frozen CLIP-like model with R-Adapt's Gaussian input filter and block-1 robustness anchor (arXiv 2603.12799).

    Every pretrained weight stays frozen; the only tensors R-Adapt adds are the anchors (one per patch grid), which
    R-Adapt+ trains. Text encoding, tokenisation and preprocessing are the base model's. Like PEFT's
    `get_peft_model`, wrapping adapts the base model *in place* (a hook on block 1's attention); use
    `with model.disable_adapter():` for the standard model and :meth:`unload` to get the base model back.

    Saving writes `radapt_config.json` (the base model's `create_model` id, paradigm, guide model, α and the two
    coefficients, filter settings, vlmrobust version) and `radapt_anchor.safetensors` (one `anchor.<grid>` tensor per
    patch grid); `create_model("radapt:<folder>")` reloads it by loading the base model and re-attaching both. Plain
    open_clip (or transformers) cannot load such a folder: the filter and the anchor injection change the forward
    pass and are not open_clip / transformers modules, and the folder holds no backbone weights, only the id to
    fetch them from.

    Use :meth:`training_free`, :meth:`model_guided`, `RAdaptTrainer` (R-Adapt+) or `create_model("radapt:...")`.

    Args:
        base (`VisionLanguageModel`): the backbone (open_clip, transformers CLIP, LLaVA or Qwen-VL; an LVLM gives an
            :class:`RAdaptLVLM`); frozen here.
        settings (`RAdaptSettings`, *optional*): filter, coefficients, provenance; `base_model` defaults to
            `base.name_or_path`.
        anchors (`Mapping[str, torch.Tensor]`, *optional*): grid key (`"16x16"`) -> anchor `(tokens, width)`. When
            omitted, the training-free anchor for the base resolution is computed.
    """

    backend = "radapt"

    def __new__(cls, base: VisionLanguageModel | None = None, *args, **kwargs):  # no args: copy / pickle
        if cls is RAdaptModel and isinstance(base, LVLM):
            cls = RAdaptLVLM  # answer_loss / generate / rank_answers with the filter in the pixel path
        return super().__new__(cls)

    def __init__(self, base: VisionLanguageModel, settings: RAdaptSettings | None = None,
                 anchors: Mapping[str, torch.Tensor] | None = None):
        nn.Module.__init__(self)  # not super(): RAdaptLVLM also derives from LVLM, whose __init__ takes the model
        if isinstance(base, RAdaptModel):
            raise TypeError("The base model is already an RAdaptModel.")
        settings = settings or RAdaptSettings()
        if not settings.base_model:
            settings.base_model = model_id(base)
        self.settings = settings
        self.base = base
        base.requires_grad_(False)
        self.image_size = base.image_size
        self.name_or_path = f"radapt({settings.paradigm}):{settings.base_model}"
        self.image_encoder = RAdaptImageEncoder(base.image_encoder, adapter_for(base), settings)
        enc = self.image_encoder
        enc.recompute_missing = settings.paradigm == "training-free"
        if anchors:
            for key, a in anchors.items():
                enc.set_anchor(tuple(int(g) for g in key.split("x")), a)
        elif settings.paradigm == "model-guided":
            raise ValueError("A model-guided R-Adapt model needs its anchors: use "
                             "RAdaptModel.model_guided(base, guide).")
        else:
            enc.set_anchor(enc.default_grid, block1_attention_output(enc.encoder, enc.adapter, enc.default_grid))

    # -- constructors -----------------------------------------------------------------------------------------------
    @classmethod
    def training_free(cls, base: VisionLanguageModel, **settings) -> RAdaptModel:
        """Anchor = block 1's attention output of `base` itself on a uniform white image.

        Args:
            base (`VisionLanguageModel`): the standard model.
            settings: fields of :class:`RAdaptSettings` (`alpha`, `d0`, `gaussian_filter`, ...).
        """
        return cls(base, RAdaptSettings(paradigm="training-free", **settings))

    @classmethod
    def model_guided(cls, base: VisionLanguageModel, guide: VisionLanguageModel,
                     grids: Sequence[Grid] | None = None, **settings) -> RAdaptModel:
        """Anchor = block 1's attention output of `guide` (e.g. a FARE checkpoint) on a white image, used in `base`.

        Args:
            base (`VisionLanguageModel`): the clean backbone that runs.
            guide (`VisionLanguageModel`): the checkpoint the anchor is read from (same tower architecture).
            grids (`Sequence[tuple]`, *optional*): patch grids to compute anchors for (default: `base`'s own); the
                guide is not kept, so other resolutions cannot be added later.
            settings: fields of :class:`RAdaptSettings`.
        """
        if isinstance(guide, RAdaptModel):
            raise TypeError("The guide must be a standard (e.g. FARE) model, not an RAdaptModel.")
        settings.setdefault("guide_model", model_id(guide))
        g_adapter = adapter_for(guide)
        b_adapter = adapter_for(base)
        grids = list(grids or [b_adapter.grid(base.image_size, base.image_size)])
        anchors = {}
        for grid in grids:
            anchor = block1_attention_output(guide.image_encoder, g_adapter, grid)
            own = block1_attention_output(base.image_encoder, b_adapter, grid)
            if anchor.shape != own.shape:
                raise ValueError(f"The guide's block-1 attention output has shape {tuple(anchor.shape)} but the base "
                                 f"model's has {tuple(own.shape)} (grid {grid_key(grid)}): the guide must share the "
                                 "base model's vision architecture.")
            anchors[grid_key(grid)] = anchor
        return cls(base, RAdaptSettings(paradigm="model-guided", **settings), anchors=anchors)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> RAdaptModel:
        """Load a folder written by :meth:`save_pretrained` (`kwargs` go to the base model's loader)."""
        from safetensors.torch import load_file

        folder = Path(path)
        cfg_path = folder / RADAPT_CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"'{folder}' has no {RADAPT_CONFIG_NAME}: not an R-Adapt folder written by "
                                    "RAdaptModel.save_pretrained.")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("method") != "radapt":
            raise ValueError(f"{cfg_path} is not an R-Adapt config (method={cfg.get('method')!r}).")
        settings = RAdaptSettings.from_dict(cfg)
        tensors = load_file(folder / RADAPT_WEIGHTS_NAME, device="cpu")
        anchors = {k.removeprefix("anchor."): v for k, v in tensors.items() if k.startswith("anchor.")}
        if not anchors:
            raise ValueError(f"{folder / RADAPT_WEIGHTS_NAME} holds no 'anchor.<grid>' tensors.")
        model = cls(create_model(settings.base_model, **kwargs), settings, anchors=anchors)
        model.name_or_path = f"radapt:{path}"
        return model

    # -- adapter control -------------------------------------------------------------------------------------------
    def disable_adapter(self) -> contextlib.AbstractContextManager:
        """Context manager: the standard base model (no filter, no anchor) inside it."""
        return self.image_encoder.disable_adapter()

    def unload(self) -> VisionLanguageModel:
        """Remove the anchor hook and return the untouched base model (its weights never changed)."""
        self.image_encoder.remove_hook()
        return self.base

    def anchor(self, grid: Grid | None = None) -> nn.Parameter:
        """The anchor `(tokens, width)` for `grid` (default: the base resolution's)."""
        return self.image_encoder.anchor_for(grid or self.image_encoder.default_grid)

    # -- delegated to the base model --------------------------------------------------------------------------------
    @property
    def preprocess(self) -> Callable:
        return self.base.preprocess

    def tokenize(self, texts: Sequence[str]):
        return self.base.tokenize(texts)

    def encode_text(self, texts, normalize: bool = False) -> torch.Tensor:
        return self.base.encode_text(texts, normalize=normalize)

    @property
    def logit_scale(self) -> float:
        return self.base.logit_scale

    # -- saving -----------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, anchors: Mapping[str, torch.Tensor] | None = None,
                        **extra_config) -> Path:
        """Write `radapt_config.json` + `radapt_anchor.safetensors` (anchors first, so a config never points at
        missing tensors).

        Args:
            save_directory (`str`): target folder (created).
            anchors (`Mapping[str, torch.Tensor]`, *optional*): grid key -> anchor to write instead of this model's
                own (a trainer passes the gathered ones under DeepSpeed ZeRO-3).
            extra_config: added to the JSON (e.g. the training config of R-Adapt+).
        """
        from ...utils.io import atomic_save_safetensors, atomic_write_json

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        anchors = dict(self.image_encoder.anchors.items()) if anchors is None else anchors
        tensors = {f"anchor.{k}": v.detach().float().cpu() for k, v in anchors.items()}
        atomic_save_safetensors(out / RADAPT_WEIGHTS_NAME, tensors, metadata={"format": "pt", "method": "radapt"})
        attn_coef, anchor_coef = self.settings.coefficients
        cfg = {"method": "radapt", "vlmrobust_version": __version__, **self.settings.to_dict(),
               "effective_attn_coef": attn_coef, "effective_anchor_coef": anchor_coef,
               "anchor_grids": list(anchors.keys()),
               "note": "Load with vlmrobust.create_model('radapt:<this folder>'); plain open_clip / transformers "
                       "cannot: the backbone weights are not here and R-Adapt changes the forward pass.",
               **extra_config}
        atomic_write_json(out / RADAPT_CONFIG_NAME, cfg)
        return out


class RAdaptLVLM(RAdaptModel, LVLM):
    """R-Adapt on a large vision-language model (LLaVA): `RAdaptModel(llava)` builds one of these.

    The LVLM protocol (`answer_loss`, `forward_logits`, `generate`, `rank_answers`, `build_batch`) is the base
    model's, run on the same frozen weights; only :meth:`pixel_inputs` differs: the [0, 1] pixels go through the
    Gaussian input filter (inside the differentiable graph, so attacks on the answer loss see it) and select the
    anchor for their patch grid before the backend's own normalisation. The anchor itself enters through the hook on
    block 1 of the tower inside the LVLM, so it acts in every forward pass of `model`, including `generate`.
    Saving and reloading are :class:`RAdaptModel`'s (`create_model("radapt:<folder>")`).
    """

    # the LVLM attributes, all the base model's (properties: nothing is registered twice)
    @property
    def model(self) -> nn.Module:
        return self.base.model

    @property
    def processor(self):
        return self.base.processor

    @property
    def image_token(self) -> str:
        return self.base.image_token

    @property
    def eot_token(self) -> str:
        return self.base.eot_token

    def num_image_tokens(self, height: int, width: int) -> int:
        return self.base.num_image_tokens(height, width)

    def extra_text_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.base.extra_text_inputs(input_ids)

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """[0, 1] pixels -> Gaussian input filter -> the base model's image kwargs, with the input's anchor selected."""
        return self.base.pixel_inputs(self.image_encoder.prepare(pixels))


def load_radapt(path: str, **kwargs) -> RAdaptModel:
    """`create_model("radapt:<folder>")`."""
    return RAdaptModel.from_pretrained(path, **kwargs)
