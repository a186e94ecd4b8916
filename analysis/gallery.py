"""Analysis 4: a data set bucketed by KC-hat (the paper's Fig. 8), as a self-contained HTML grid."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from analysis._common import Exportable, as_float_array


@dataclass
class GalleryData(Exportable):
    kc_hat: np.ndarray          # [N]
    bucket: np.ndarray          # [N] bucket index per image
    bucket_size: int
    names: list[str] = field(default_factory=list)

    @property
    def buckets(self) -> list[tuple[int, int, np.ndarray]]:
        """(low, high, image indices sorted by KC-hat) for each non-empty bucket, low -> high."""
        out = []
        for b in np.unique(self.bucket):
            idx = np.flatnonzero(self.bucket == b)
            idx = idx[np.argsort(self.kc_hat[idx], kind="stable")]
            out.append((int(b * self.bucket_size), int((b + 1) * self.bucket_size), idx))
        return out

    def to_frame(self) -> pd.DataFrame:
        n = len(self.kc_hat)
        lo = self.bucket * self.bucket_size
        kc = self.kc_hat.astype(np.int64) if np.all(self.kc_hat == np.round(self.kc_hat)) else self.kc_hat
        return pd.DataFrame({"image": self.names if len(self.names) == n else [str(i) for i in range(n)],
                             "kc_hat": kc, "bucket_low": lo, "bucket_high": lo + self.bucket_size})


def compute_gallery(kc_hat: Sequence[float] | np.ndarray | Tensor, bucket_size: int,
                    names: Sequence[str] | None = None) -> GalleryData:
    """Bucket b holds KC-hat in (b * bucket_size, (b + 1) * bucket_size] (bucket 0 includes 0),
    so the full budget (256 of 256) lands in the last bucket, 224-256."""
    assert bucket_size >= 1, f"bucket_size must be >= 1, got {bucket_size}"
    kc = as_float_array(kc_hat)
    return GalleryData(kc_hat=kc, bucket=bucket_index(kc, bucket_size), bucket_size=int(bucket_size),
                       names=list(names or []))


def bucket_index(values: np.ndarray, bucket_size: float) -> np.ndarray:
    """Right-closed buckets of width ``bucket_size``: [0, s], (s, 2s], (2s, 3s], ..."""
    v = np.asarray(values, dtype=np.float64)
    return np.maximum(np.ceil(v / bucket_size).astype(np.int64) - 1, 0)


def _thumb_uri(image: Tensor, size: int) -> str:
    from PIL import Image

    from karl.data.images import to_pil

    pil = to_pil(image)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.NEAREST if pil.width < size else Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_html(images: Tensor, kc_hat: Sequence[float] | np.ndarray | Tensor, bucket_size: int,
                 names: Sequence[str] | None = None, max_per_bucket: int = 16, thumb_size: int = 96,
                 title: str = "Images bucketed by KC-hat") -> str:
    """An HTML fragment: one row per KC-hat bucket, inline base64 PNG thumbnails.

    Args:
        images: [N, 3, H, W] in [0, 1].
        kc_hat: [N] kept-token counts (or any complexity score: buckets of ``bucket_size``).
        bucket_size: width of a bucket in tokens (the paper: 32 of 256).
        max_per_bucket: thumbnails shown per bucket (evenly spread over its KC-hat range).
    """
    assert images.ndim == 4 and images.shape[0] == len(kc_hat), (
        f"images {tuple(images.shape)} and {len(kc_hat)} KC-hat values")
    data = compute_gallery(kc_hat, bucket_size, names)
    names = data.names if len(data.names) == len(data.kc_hat) else [str(i) for i in range(len(data.kc_hat))]
    rows = []
    for lo, hi, idx in data.buckets:
        shown = idx[np.unique(np.linspace(0, len(idx) - 1, min(max_per_bucket, len(idx))).round().astype(int))]
        cells = "".join(
            f'<figure class="karl-thumb"><img src="{_thumb_uri(images[i], thumb_size)}" '
            f'width="{thumb_size}" height="{thumb_size}" alt="{html.escape(names[i])}" '
            f'title="{html.escape(names[i])}: KC-hat {data.kc_hat[i]:g}">'
            f"<figcaption>{data.kc_hat[i]:g}</figcaption></figure>" for i in shown)
        lo_txt = lo + 1 if lo > 0 else 0
        rows.append(f'<div class="karl-bucket"><div class="karl-bucket-label">KC-hat {lo_txt}-{hi}'
                    f"<br><small>{len(idx)} image{'s' if len(idx) != 1 else ''}</small></div>"
                    f'<div class="karl-bucket-row">{cells}</div></div>')
    style = ("<style>.karl-gallery{font-family:sans-serif}.karl-bucket{display:flex;align-items:center;"
             "border-top:1px solid #ddd;padding:4px 0}.karl-bucket-label{width:110px;flex:none;"
             "font-weight:bold}.karl-bucket-row{display:flex;flex-wrap:wrap;gap:4px}.karl-thumb"
             "{margin:0;text-align:center;font-size:11px;color:#555}.karl-thumb img"
             "{image-rendering:pixelated;display:block}</style>")
    return (f'{style}<div class="karl-gallery"><h3>{html.escape(title)}</h3>'
            f"{''.join(rows)}</div>")
