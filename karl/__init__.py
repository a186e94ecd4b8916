"""KARL: single-pass adaptive image tokenization (arXiv 2507.07995)."""

from karl.api import build_model, load_model, load_pretrained
from karl.checkpoint import save_pretrained
from karl.config import LOSS_BINS, ExperimentConfig, ModelConfig, load_config
from karl.model import KARL, Encoding, epsilon_to_bin

__all__ = ["KARL", "Encoding", "LOSS_BINS", "ExperimentConfig", "ModelConfig", "build_model",
           "epsilon_to_bin", "load_config", "load_model", "load_pretrained", "save_pretrained", "load_official", "push_to_hub"]


def load_official(*args, **kwargs):
    """Load an authors' ``.pth`` checkpoint (see :mod:`karl.official`)."""
    from karl.official import load_official as _load
    return _load(*args, **kwargs)


def push_to_hub(model, repo_id: str, **kwargs):
    """Upload a model to the Hugging Face Hub as a release with a model card (see :mod:`karl.hub`)."""
    from karl.hub import push_to_hub as _push
    return _push(model, repo_id, **kwargs)
