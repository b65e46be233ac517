import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlmrobust.models import BACKENDS, check_pixels, create_model


def _pil(seed=0, size=(40, 50)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8"))


def test_open_clip_encode_image_matches_plain_open_clip(tiny_open_clip_dir):
    m = create_model(f"local-dir:{tiny_open_clip_dir}")
    plain, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_open_clip_dir}")
    plain.eval()
    img = _pil()
    ours = m.encode_image(m.preprocess(img)[None])
    theirs = plain.encode_image(preprocess(img)[None])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    px = m.preprocess(img)
    assert px.shape == (3, m.image_size, m.image_size) and px.min() >= 0 and px.max() <= 1


def test_hf_clip_encode_image_matches_processor_and_forward(tiny_hf_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    m = create_model(f"hf-clip:{tiny_hf_clip_dir}")
    plain = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    proc = CLIPProcessor.from_pretrained(tiny_hf_clip_dir)
    img = _pil(1)
    theirs = plain.get_image_features(**proc(images=img, return_tensors="pt")).pooler_output
    ours = m.encode_image(m.preprocess(img)[None])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    text_theirs = plain.get_text_features(**proc.tokenizer(["a photo of a cat"], return_tensors="pt")).pooler_output
    torch.testing.assert_close(m.encode_text(["a photo of a cat"]), text_theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip"])
def test_encode_image_is_differentiable_wrt_pixels(kind, tiny_open_clip_dir, tiny_hf_clip_dir):
    spec = f"local-dir:{tiny_open_clip_dir}" if kind == "open_clip" else f"hf-clip:{tiny_hf_clip_dir}"
    m = create_model(spec)
    x = torch.rand(2, 3, m.image_size, m.image_size, requires_grad=True)
    m.encode_image(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the normalisation inside the model is the backend's: (x - mean) / std
    torch.testing.assert_close(m.image_encoder.normalize(x.detach()),
                               (x.detach() - torch.tensor(m.mean).view(1, 3, 1, 1)) / torch.tensor(m.std).view(1, 3, 1, 1))


def test_zero_shot_classifier_is_scaled_cosine(tiny_open_clip_dir):
    m = create_model(f"local-dir:{tiny_open_clip_dir}")
    clf = m.zero_shot_classifier(["cat", "dog", "car"], ["a photo of a {}.", "a {}."])
    x = torch.rand(4, 3, 32, 32)
    img = F.normalize(m.encode_image(x), dim=-1)
    txt = torch.stack([F.normalize(F.normalize(m.encode_text([f"a photo of a {c}.", f"a {c}."]), dim=-1).mean(0), dim=-1)
                       for c in ["cat", "dog", "car"]])
    torch.testing.assert_close(clf(x), m.logit_scale * img @ txt.T, rtol=1e-5, atol=1e-5)


def test_open_clip_save_reloads_in_plain_open_clip_with_identical_outputs(tiny_open_clip_dir, tmp_path):
    m = create_model(f"local-dir:{tiny_open_clip_dir}")
    with torch.no_grad():  # change the weights so the test cannot pass by reloading the original files
        for p in m.image_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.save_pretrained(tmp_path / "saved", method="test")
    plain, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'saved'}")
    plain.eval()
    x = torch.rand(3, 3, 32, 32)
    mean, std = torch.tensor(m.mean).view(1, 3, 1, 1), torch.tensor(m.std).view(1, 3, 1, 1)
    torch.testing.assert_close(plain.encode_image((x - mean) / std), m.encode_image(x), rtol=0, atol=0)
    tok = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'saved'}")
    torch.testing.assert_close(plain.encode_text(tok(["a dog"])), m.encode_text(["a dog"]), rtol=0, atol=0)
    assert (tmp_path / "saved" / "vlmrobust_config.json").is_file()
    assert not list((tmp_path / "saved").glob("*.tmp"))


def test_hf_clip_save_reloads_in_plain_transformers(tiny_hf_clip_dir, tmp_path):
    from transformers import CLIPModel

    m = create_model(f"hf-clip:{tiny_hf_clip_dir}")
    with torch.no_grad():
        for p in m.image_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.save_pretrained(tmp_path / "saved")
    plain = CLIPModel.from_pretrained(tmp_path / "saved").eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(m.mean).view(1, 3, 1, 1), torch.tensor(m.std).view(1, 3, 1, 1)
    torch.testing.assert_close(plain.get_image_features(pixel_values=(x - mean) / std).pooler_output,
                               m.encode_image(x), rtol=0, atol=0)


def test_open_clip_arch_without_pretrained_gives_random_model():
    m = create_model("open_clip:ViT-B-32")
    assert m.image_size == 224 and m.backend == "open_clip"
    assert m.name_or_path == "ViT-B-32"


def test_hf_hub_prefix_goes_to_open_clip_hub_loader(monkeypatch):
    seen = {}

    def fake(name, pretrained=None, **kw):
        seen["name"] = name
        raise RuntimeError("stop here")

    monkeypatch.setattr("vlmrobust.models.open_clip_backend.load_open_clip", fake)
    with pytest.raises(RuntimeError, match="stop here"):
        create_model("hf-hub:chs20/fare2-clip")
    assert seen["name"] == "hf-hub:chs20/fare2-clip"


def test_bad_model_names_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="open_clip:ViT-B-32/openai"):
        create_model("ViT-B-32")
    with pytest.raises(ValueError, match="backend prefix"):
        create_model("nonsense:foo")
    with pytest.raises(FileNotFoundError, match="folder not found"):
        create_model(f"local-dir:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="Unknown open_clip architecture"):
        create_model("open_clip:ViT-Z-99")
    assert {"open_clip", "hf-clip", "hf-hub", "local-dir", "vlmrobust"} <= set(BACKENDS.names())


def test_hf_layout_given_as_local_dir_says_use_hf_clip(tiny_hf_clip_dir):
    with pytest.raises(ValueError, match="hf-clip:"):
        create_model(f"local-dir:{tiny_hf_clip_dir}")


def test_processor_from_another_model_is_refused(tiny_hf_clip_dir, tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from vlmrobust.models.hf_clip_backend import HFCLIP

    model = CLIPModel.from_pretrained(tiny_hf_clip_dir)
    proc = CLIPProcessor.from_pretrained(tiny_hf_clip_dir)
    proc.image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    with pytest.raises(ValueError, match="same id/folder"):
        HFCLIP(model, proc, "mismatch")


def test_images_outside_unit_range_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_pixels(torch.randn(2, 3, 8, 8) * 3)
    check_pixels(torch.rand(2, 3, 8, 8))
