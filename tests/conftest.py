import os

import pytest
import torch

# tiny models on a shared 2-core runner: one intra-op thread is much faster than two contending ones
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_open_clip_dir(tmp_path_factory):
    from vlmrobust.testing import build_tiny_open_clip

    return build_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"), seed=0)


@pytest.fixture(scope="session")
def tiny_open_clip_dropout_dir(tmp_path_factory):
    """The tiny open_clip CLIP with patch dropout 0.5: train and eval mode give different outputs."""
    from vlmrobust.testing import build_tiny_open_clip

    return build_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip_dropout"), seed=0, patch_dropout=0.5)


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory):
    from vlmrobust.testing import build_tiny_hf_clip

    return build_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf_clip"), seed=0)


class TensorImageDataset(torch.utils.data.Dataset):
    """Random [0,1] images with labels, for trainer tests."""

    def __init__(self, n=16, size=32, num_classes=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.arange(n) % num_classes
        self.classnames = ["cat", "dog", "bird", "fish", "car"][:num_classes]
        self.templates = ["a photo of a {}."]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": int(self.labels[i])}


@pytest.fixture
def image_dataset():
    return TensorImageDataset()
