"""Data for KARL: image loading, the offline photo corpus, procedural images, data sets.

- :mod:`karl.data.images`: ``load_image``, ``preprocess`` (eval protocol), ``to_pil``, ``list_images``.
- :mod:`karl.data.corpus`: ``build_corpus`` (photos shipped in PyPI/Debian packages, with a
  manifest), ``split_sources``, ``RandomCropDataset``; CLI ``python -m karl.data.corpus``.
- :mod:`karl.data.procedural`: images from small random programs of known length in bits.
- :mod:`karl.data.datasets`: ``build_dataset(data_cfg, image_size, split)``.
- :mod:`karl.data.spec`: ``parse_data_spec`` (the data spec every tool reads), ``load_hf_split``,
  ``ensure_corpus``.
- :mod:`karl.data.imageset`: ``open_images(spec, size, max_images, seed)``, the one dispatch from a
  spec to a fixed set of images (karl-eval, karl-complexity, the report, the app).
"""

from karl.data.corpus import RandomCropDataset, build_corpus, load_manifest, split_sources
from karl.data.datasets import build_dataset
from karl.data.images import ImageLoadError, list_images, load_image, preprocess, to_pil, to_tensor
from karl.data.procedural import FAMILIES, ProceduralSample, batch, description_length, generate, render

__all__ = ["ImageLoadError", "load_image", "preprocess", "to_pil", "to_tensor", "list_images",
           "build_corpus", "load_manifest", "split_sources", "RandomCropDataset", "build_dataset",
           "FAMILIES", "ProceduralSample", "generate", "render", "batch", "description_length"]
