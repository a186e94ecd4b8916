import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_model():
    from karl import build_model
    return build_model("tiny", seed=0).eval()


@pytest.fixture
def tiny_images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 32, 32, generator=g)
