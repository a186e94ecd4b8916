"""The Tokens tab: what each kept token encodes (see :mod:`analysis.tokens`).

For an uploaded image at epsilon: the film strip of its program decoded with the first
1, 2, 4, ... kept tokens, the error-vs-tokens curve, a grid of every kept token's
leave-one-out map, the argmax-token segmentation, one picked token's map and the
agreement of the removal and attention maps. When KC-hat exceeds the cap (default
:data:`MAX_APP_MAPS`) the maps are computed for that many tokens sampled evenly over the
program, so one request costs at most ``1 + cap`` decodes (plus the strip's log2 KC-hat).
Results are cached per (image, loss bin, cap): picking another token costs no model pass.
"""

from __future__ import annotations

import html
import time
from typing import Any

import gradio as gr
import numpy as np

from app import inference as inf
from app.errors import user_error

MAX_APP_MAPS = 48       # default cap on the tokens mapped per request
CAP_LIMIT = 256         # the largest cap the slider offers


def _cache(model) -> inf.LRUCache:
    # Lives with the model's other caches (cleared by inf.clear_caches, freed with the model).
    return inf.model_caches(model).setdefault("tokens", inf.LRUCache(8))


def _upscale(rgb: np.ndarray, min_size: int = inf.DISPLAY_SIZE) -> np.ndarray:
    """[H, W, 3] uint8 -> nearest-upscaled by an integer factor to at least ``min_size``."""
    f = max(1, -(-min_size // max(rgb.shape[:2])))
    return np.repeat(np.repeat(rgb, f, 0), f, 1) if f > 1 else rgb


def _uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.moveaxis(image, 0, -1), 0, 1) * 255).round().astype(np.uint8)


def check_tokens_request(model, epsilon: Any, max_maps: Any) -> tuple[float, int, list[str]]:
    """The tab's inputs by karl's one rule (:func:`app.inference.check_request`,
    ``karl.model.check_count``): above the range, its end with a notice; below it, NaN or not a
    number, one line -> (eps, cap, notices)."""
    eps, _, notices = inf.check_request(model, epsilon, None)
    cap, more = inf.check_count(max_maps, "token cap", CAP_LIMIT, "token maps",
                                f"the {CAP_LIMIT} maps one request may compute")
    return eps, cap, notices + more


def compute_tokens(model, image: Any, epsilon: Any, max_maps: Any = MAX_APP_MAPS):
    """(prepared image, ProgressiveData, TokenMaps, seconds, notices) for one upload, cached."""
    import torch

    from analysis.tokens import compute_progressive, compute_token_maps

    eps, cap, notices = check_tokens_request(model, epsilon, max_maps)
    prep = image if isinstance(image, inf.PreparedImage) else inf.prepare_image(image, model.image_size)
    idx, bin_value = model.loss_bin(eps)

    def compute():
        t0 = time.perf_counter()
        with torch.inference_mode():
            pg = compute_progressive(model, prep.tensor, bin_value)
            tm = compute_token_maps(model, prep.tensor, bin_value, max_maps=cap)
        return pg, tm, time.perf_counter() - t0
    pg, tm, seconds = _cache(model).get_or_compute((prep.key, idx, cap), compute)
    return prep, pg, tm, seconds, prep.notices + notices


def _strip(pg) -> list[tuple[np.ndarray, str]]:
    frames = [(_upscale(_uint8(pg.original)), "original")]
    # Short captions: they must fit a tile of the full-width gallery (checked in the browser test).
    frames += [(_upscale(_uint8(img)), f"{int(n)} tok · L1 {e:.3f}")
               for img, n, e in zip(pg.images, pg.num_tokens, pg.l1)]
    return frames


def _map_gallery(tm) -> list[tuple[np.ndarray, str]]:
    from analysis.tokens import map_rgb
    return [(_upscale(map_rgb(tm, j, overlay=0.75), 128), f"token {int(p) + 1} (#{int(r)})")
            for j, (p, r) in enumerate(zip(tm.tokens, tm.order))]


def _status(prep, tm, seconds: float, notices: list[str]) -> str:
    lines = [f"**{prep.name}**: KC-hat **{tm.kc_hat}** of {tm.budget} tokens at epsilon bin "
             f"{tm.epsilon_bin:g}; full-program L1 {tm.l1:.4f}; {len(tm.tokens)} token maps "
             f"({seconds:.1f} s, cached)."]
    lines += [f"- {n}" for n in dict.fromkeys(tm.notes + notices)]
    return "\n".join(lines)


def _empty(status: str) -> tuple:
    """The tab's 8 outputs with nothing from a previous image, and ``status``."""
    return [], None, [], None, gr.update(choices=[], value=None), None, None, status


def tokens_view(model, image: Any, epsilon: Any, max_maps: Any = MAX_APP_MAPS):
    """The tab's 8 outputs: strip (gallery), error curve, map grid (gallery), segmentation,
    token picker, the picked token's map, removal-vs-attention agreement, status.
    Bad input raises ``gr.Error`` (see :func:`tokens_page` for the page's event)."""
    from analysis.tokens import (plot_map_agreement, plot_progressive, plot_token_map,
                                 segmentation_rgb)
    from app.figures import fit_figure

    if image is None:
        return _empty("Upload an image or pick an example.")
    try:
        prep, pg, tm, seconds, notices = compute_tokens(model, image, epsilon, max_maps)
        choices = [(f"token {int(p) + 1} (#{int(r)} of {tm.kc_hat})", j)
                   for j, (p, r) in enumerate(zip(tm.tokens, tm.order))]
        picked = fit_figure(plot_token_map(tm, 0)) if len(tm.tokens) else None
        agree = fit_figure(plot_map_agreement(tm)) if tm.attention is not None else None
        seg = _upscale(segmentation_rgb(tm))
        return (_strip(pg), fit_figure(plot_progressive(pg)), _map_gallery(tm), seg,
                gr.update(choices=choices, value=0 if choices else None), picked, agree,
                _status(prep, tm, seconds, notices))
    except Exception as err:
        raise user_error(err) from None


def tokens_page(model, image: Any, epsilon: Any, max_maps: Any = MAX_APP_MAPS) -> tuple:
    """The page's event: like :func:`tokens_view`, but a bad input (epsilon "nan", cap 0, a
    file that is not an image) clears every output and is shown once, in the status, as on
    the Tokenize tab: no toast, no "Error" badges, nothing left from the previous image."""
    try:
        return tokens_view(model, image, epsilon, max_maps)
    except gr.Error as err:
        return _empty(f'<span class="karl-error">{html.escape(str(err.message))}</span>')


def token_pick_view(model, image: Any, epsilon: Any, max_maps: Any, pick: Any, kind: str = "removal"):
    """The picked token's map (from the cache: no model pass unless the image is new)."""
    from analysis.tokens import plot_token_map
    from app.figures import fit_figure

    if image is None or pick is None:
        return None
    try:
        tm = compute_tokens(model, image, epsilon, max_maps)[2]
        j = int(pick)
        if not 0 <= j < len(tm.tokens):
            raise inf.InputError(f"no token {pick!r} among the {len(tm.tokens)} mapped")
        return fit_figure(plot_token_map(tm, j, kind if tm.attention is not None else "removal"))
    except Exception as err:
        raise user_error(err) from None


def _controls(model, examples: list[str] | None) -> tuple:
    """Left column: image, epsilon, cap, status, examples (SafeSliders: the handler applies
    the app's range rule to typed values, as on the Tokenize tab)."""
    from app.components import SafeImage, SafeSlider

    bins = list(model.config.loss_bins)
    image = SafeImage(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                      label=f"Image (the model sees its centre square at {model.image_size}x{model.image_size})",
                      height=260, elem_id="tokens-image")
    eps = SafeSlider(bins[0], bins[-1], value=0.05, step=0.005, label="epsilon", elem_id="tokens-epsilon")
    cap = SafeSlider(1, CAP_LIMIT, value=MAX_APP_MAPS, step=1, label="max token maps",
                     info="above this many kept tokens, maps for an even sample", elem_id="tokens-cap")
    status = gr.Markdown(elem_id="tokens-status")
    if examples:
        gr.Examples(examples=[[p] for p in examples], inputs=[image], examples_per_page=8)
    return image, eps, cap, status


def build_tokens_tab(model, run_model: dict, examples: list[str] | None = None) -> None:
    """Add the Tokens tab to the enclosing ``gr.Blocks`` (call inside its context).

    Galleries take the full width, so at 1400 px every tile and caption fits (8 columns of
    about 155 px); plot titles fit their half-width boxes (browser test)."""
    with gr.Tab("Tokens"):
        gr.Markdown("What each kept token encodes. **Strip**: the program decoded with its first "
                    "1, 2, 4, ... kept tokens. **Maps**: how much each pixel changes when one token "
                    "is removed from the program (each scaled to its own maximum). **Segmentation**: "
                    "the token whose removal changes each pixel most. See docs/ANALYSIS.md.")
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                t_image, t_eps, t_cap, t_status = _controls(model, examples)
            with gr.Column(scale=3, min_width=400):
                t_curve = gr.Plot(label="error vs tokens", elem_id="tokens-curve")
        t_strip = gr.Gallery(label="program prefixes decoded", columns=8, height="auto", object_fit="contain",
                             elem_id="tokens-strip")
        t_maps = gr.Gallery(label="token maps (change when removed)", columns=8, height=440,
                            object_fit="contain", elem_id="tokens-maps")
        with gr.Row():
            t_seg = gr.Image(label="argmax token (black: no token changes the pixel)", type="numpy",
                             format="png", interactive=False, height=360, elem_id="tokens-seg")
            t_agree = gr.Plot(label="removal vs attention maps", elem_id="tokens-agree")
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                t_pick = gr.Dropdown(choices=[], label="token", interactive=True)
                t_kind = gr.Radio([("change when removed", "removal"), ("decoder attention", "attention")],
                                  value="removal", label="map")
            with gr.Column(scale=3):
                t_map = gr.Plot(label="map of the picked token", elem_id="tokens-map")
        gr.on([t_image.change, t_eps.change, t_cap.release],
              lambda i, e, c: tokens_page(model, i, e, c), inputs=[t_image, t_eps, t_cap],
              outputs=[t_strip, t_curve, t_maps, t_seg, t_pick, t_map, t_agree, t_status],
              trigger_mode="always_last", api_visibility="private", **run_model)
        gr.on([t_pick.input, t_kind.change],
              lambda i, e, c, p, k: token_pick_view(model, i, e, c, p, k),
              inputs=[t_image, t_eps, t_cap, t_pick, t_kind], outputs=t_map,
              api_visibility="private", **run_model)


__all__ = ["MAX_APP_MAPS", "check_tokens_request", "compute_tokens", "tokens_view", "tokens_page",
           "token_pick_view", "build_tokens_tab"]
