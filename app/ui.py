"""The Gradio 6 app: Tokenize, Batch and Analysis tabs around one loaded KARL.

``build_demo(model)`` returns a ``gr.Blocks``; ``app.py`` loads the model once and calls
``launch_demo``. Public API endpoints (``gradio_client``): ``/tokenize`` (the Tokenize
tab's outputs) and ``/complexity`` (JSON for scripts). Every other event is private.
All model work shares one concurrency group, so one request runs at a time and the
queue (bounded) holds the rest.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from analysis._common import figure_style, use_figure_template
from app import inference as inf
from app.batch import batch_tokenize, download_dir, new_download_dir, write_csv
from app.components import KarlBlocks, SafeImage, SafeNumber, SafeSlider
from app.errors import user_error
from app.figures import fit_figure as _fit_figure
from app.figures import placeholder_figure as _placeholder_figure

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
QUEUE_MAX_SIZE = 64          # waiting requests beyond this are refused ("queue full"); app.py --queue-size
MAX_ANALYSIS_IMAGES = 48     # images per analysis run / report
CONCURRENCY_ID = "model"     # every event that runs the model
_NO_IMAGE = "Upload an image, paste one from the clipboard or pick an example."
CSS = """
#kc-hat input, #kc-hat textarea {font-size: 1.6em; font-weight: bold}
.karl-banner {border: 2px solid #e76f51; border-radius: 8px; padding: 4px 12px; background: #fff4ef}
.karl-error {color: #b42318; font-weight: 600}
#input-image img, #tokens-image img {object-fit: contain}
"""
_INTRO = """# KARL studio
Single-pass adaptive image tokenization ([arXiv 2507.07995](https://arxiv.org/abs/2507.07995)):
KARL keeps the fewest 1D tokens it predicts are needed to reconstruct the image within the
pixel L1 error **epsilon**. The number kept, **KC-hat**, estimates the image's complexity."""


# ----------------------------------------------------------------------------- handlers

def _model_card(model, loaded_from: str, markdown: bool = True) -> str:
    """One line describing the model: Markdown for the page, plain text for the HTML report."""
    c = model.config
    params = sum(p.numel() for p in model.parameters()) / 1e6
    head = f"**Model**: {html.escape(loaded_from)}" if markdown else f"{loaded_from}"
    return (f"{head} · {c.image_size}x{c.image_size} input · "
            f"{c.base.kind} base ({c.grid_size}x{c.grid_size} grid) · width {c.width}, "
            f"{c.encoder_layers}+{c.decoder_layers} layers · up to {c.max_tokens} tokens "
            f"· {params:.1f} M parameters · device {model.device}")


def _verdict(r: inf.TokenizeResult) -> str:
    """One sentence: met, out of reach (every token kept and still above epsilon), or missed."""
    if r.met_epsilon:
        return (f"**{r.kc_hat} of {r.budget} tokens** reconstruct this image within epsilon "
                f"{r.epsilon:g} (L1 {r.l1:.3f}).")
    if r.kc_hat >= r.budget:
        return (f"**Out of reach:** L1 with all {r.budget} tokens is {r.l1:.3f} > {r.epsilon:g}, so "
                "every token is kept; only a looser epsilon or a stronger model can meet it.")
    return (f"**Not met:** KARL kept {r.kc_hat} of {r.budget} tokens, but their L1 is {r.l1:.3f} > "
            f"{r.epsilon:g}: its halting head judged this image simpler than it is.")


def _metrics_markdown(r: inf.TokenizeResult) -> str:
    lp = r.lpips()
    met = "met" if r.met_epsilon else "**not met**"
    asked = f"{r.epsilon:g}" + (f" (loss bin {r.epsilon_bin:g})" if abs(r.epsilon - r.epsilon_bin) > 1e-9 else "")
    rows = [("L1 achieved vs epsilon asked", f"{r.l1:.4f} vs {asked}: {met}"),
            ("PSNR", f"{r.psnr:.2f} dB"), ("SSIM", f"{r.ssim:.4f}"),
            ("LPIPS (AlexNet)", "n/a" if lp is None else f"{lp:.4f}")]
    return (_verdict(r) + "\n\n| metric | value |\n|---|---|\n"
            + "\n".join(f"| {a} | {b} |" for a, b in rows))


def _notices_markdown(notices: list[str]) -> str:
    return "\n".join(f"- {n}" for n in dict.fromkeys(notices)) if notices else ""


def tokenize_view(model, image: Any, epsilon: float, budget: float):
    """The Tokenize tab's 9 outputs: (original, reconstruction), KC-hat, continuous KC, metrics
    table, error heatmap, halting figure, KC-hat curve, kept tokens, notices."""
    if image is None:
        return _empty_outputs(_NO_IMAGE)
    from analysis.halting import HaltingData, plot_halting
    from analysis.kc_curve import KCCurve, plot_kc_curve

    try:
        prep = inf.prepare_image(image, model.image_size)
        r = inf.tokenize(model, prep, epsilon, budget, sweep=True)

        def figures():  # built once per (image, bin, budget); never mutated afterwards
            sweep = inf.halting_sweep(model, prep, r.budget)
            curve = KCCurve.from_sweep(sweep, names=[r.name])
            halting = plot_halting(HaltingData.from_sweep(sweep, model.config.halt_threshold), r.epsilon_bin,
                                   title=f"p(halt) per token at epsilon {r.epsilon_bin:g}: "
                                         f"KC-hat {r.kc_hat} of {r.budget}")
            return (_fit_figure(halting), _fit_figure(plot_kc_curve(curve, mark_epsilon=r.epsilon_bin)))
        halting_fig, curve_fig = inf.model_caches(model)["figures"].get_or_compute(
            (prep.key, r.epsilon_bin, r.budget), figures)
        metrics = _metrics_markdown(r)
    except Exception as err:
        raise user_error(err) from None
    kept = {"kc_hat": r.kc_hat, "budget": r.budget, "kept_positions": r.kept_positions,
            "codebook_ids": r.token_ids}
    heat = inf.error_heatmap(r.error_map())
    return ((inf.to_display(r.original), inf.to_display(r.reconstruction)), r.kc_hat,
            round(r.continuous_kc, 2), metrics, heat, halting_fig, curve_fig, kept,
            _notices_markdown(r.notices))


def _empty_outputs(message: str) -> tuple:
    """The 9 Tokenize outputs with nothing that reads as a result, and ``message`` as notice."""
    return (None, None, None, "", None, _placeholder_figure(), _placeholder_figure(), None, message)


def tokenize_page(model, image: Any, epsilon: Any, budget: Any) -> tuple:
    """The page's Tokenize event: like :func:`tokenize_view`, but a bad input clears every
    output (no stale numbers from the previous image) and is shown once, in the notices."""
    try:
        out = tokenize_view(model, image, epsilon, budget)
    except gr.Error as err:
        out = _empty_outputs(f'<span class="karl-error">{html.escape(str(err.message))}</span>')
    as_text = ["" if v is None else str(v) for v in out[1:3]]  # the page shows them in text boxes
    return (out[0], *as_text, *out[3:])


def complexity_view(model, image: Any, epsilon: float, budget: float) -> dict:
    """``/complexity``: one encoder pass, JSON for scripts."""
    if image is None:
        raise gr.Error("No image: pass a file, e.g. handle_file('photo.png').", print_exception=False)
    try:
        return inf.complexity_json(inf.tokenize(model, image, epsilon, budget, sweep=False))
    except Exception as err:
        raise user_error(err) from None


def _histogram(kc: np.ndarray, budget: int):
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=kc, xbins=dict(start=-0.5, end=budget + 0.5, size=max(1, budget // 32)),
                                 marker_color="#264653"))
    fig.update_layout(title=f"KC-hat over {len(kc)} images", xaxis_title="tokens kept (KC-hat)",
                      yaxis_title="images", xaxis_range=[-0.5, budget + 0.5], **figure_style(),
                      bargap=0.05)
    return fig


def batch_view(model, files, epsilon: float, budget: float, with_lpips: bool,
               progress=gr.Progress()):
    """The Batch tab: table, histogram, CSV, gallery, summary."""
    from analysis.gallery import gallery_html

    if not files:
        raise gr.Error("No files: upload images or a zip of images.", print_exception=False)
    try:
        res = batch_tokenize(model, files, epsilon, budget, with_lpips=bool(with_lpips),
                             progress=lambda f, d: progress(f, desc=d))
        csv = write_csv(res.frame)
        kc = res.frame["kc_hat"].to_numpy()
        bucket = max(1, res.budget // 8)
        gallery = gallery_html(res.thumbs, kc, bucket, names=list(res.frame["image"]),
                               title=f"Images bucketed by KC-hat (epsilon {res.epsilon_bin:g}, buckets of {bucket})")
    except Exception as err:
        raise user_error(err) from None
    lines = [f"**{len(res.frame)} images** at epsilon {res.epsilon:g} (bin {res.epsilon_bin:g}), budget "
             f"{res.budget}: KC-hat mean {kc.mean():.1f}, median {np.median(kc):g}; "
             f"{res.frame['met_epsilon'].mean():.0%} met epsilon; {res.seconds:.1f} s."]
    lines += [f"- skipped {html.escape(n)}: {html.escape(r)}" for n, r in res.skipped[:20]]
    if len(res.skipped) > 20:
        lines.append(f"- ... and {len(res.skipped) - 20} more skipped")
    lines += [f"- {n}" for n in res.notices]
    shown = res.frame.round({"l1": 4, "psnr": 2, "ssim": 4, "lpips": 4})
    return shown, _histogram(kc, res.budget), str(csv), gallery, "\n".join(lines)


def load_analysis_set(model, source: str, files) -> tuple[Any, list[str], list[str]]:
    """(images [N, 3, S, S], names, notes) for the Analysis tab."""
    import torch

    from app.batch import no_readable_image, prepare_inputs

    size, notes = model.image_size, []
    if source == "probes":
        from analysis.structure_noise import standard_probe_images
        images, names = standard_probe_images(size)
        return images, list(names), notes
    if source == "examples":
        # The folder as a data spec, read by the one image-source layer: the images karl-eval,
        # karl-complexity and the report get for it (karl/data/imageset.py).
        from karl.data.imageset import open_images
        if not EXAMPLES_DIR.is_dir():
            raise no_readable_image([], "the images of this set")
        images, names, skipped = open_images(EXAMPLES_DIR, size, MAX_ANALYSIS_IMAGES).load_all()
        if not names:
            raise no_readable_image(skipped, "the images of this set")
        return images, names, notes + [f"skipped {n}: {r}" for n, r in skipped[:10]]
    if not files:
        raise inf.InputError("No files: upload images or a zip first, or choose a built-in set.")
    # Streams and decodes: only the small model inputs stay in memory (see prepare_inputs).
    prepared, skipped = prepare_inputs(files, size, max_images=MAX_ANALYSIS_IMAGES)
    notes += [f"skipped {n}: {r}" for n, r in skipped[:10]]
    if not prepared:
        raise no_readable_image(skipped, "the images of this set")
    tensors, names = [p.tensor for p in prepared], [p.name for p in prepared]
    return torch.stack(tensors), names, notes


def analysis_view(model, source: str, files, epsilon: float, progress=gr.Progress()):
    """Structure vs noise, KC-hat vs epsilon over the set, halting heatmap of the first image."""
    from analysis.halting import compute_halting, plot_halting_heatmap
    from analysis.kc_curve import compute_kc_curve, plot_kc_curve
    from analysis.structure_noise import (compute_delta, compute_token_sweep, plot_kc_vs_delta,
                                          plot_token_sweep)

    try:
        eps, _, _ = inf.check_request(model, epsilon, None)
        progress(0.05, desc="loading images")
        images, names, notes = load_analysis_set(model, source, files)
        progress(0.15, desc="token sweep")
        sweep = _fit_figure(plot_token_sweep(compute_token_sweep(model, images, names)))
        progress(0.45, desc="delta")
        delta = _fit_figure(plot_kc_vs_delta(compute_delta(model, images, epsilon=eps, names=names)))
        progress(0.7, desc="KC-hat curve")
        curve = _fit_figure(plot_kc_curve(compute_kc_curve(model, images, names=names), mark_epsilon=eps,
                                          names=names if len(names) <= 8 else None))
        progress(0.9, desc="halting heatmap")
        heat = plot_halting_heatmap(compute_halting(model, images[0]))
    except Exception as err:
        raise user_error(err) from None
    summary = f"{len(names)} images: " + ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    status = "\n".join([summary] + [f"- {n}" for n in notes])
    return sweep, delta, curve, gr.update(choices=names, value=names[0]), heat, status


def heatmap_view(model, source: str, files, name: str):
    from analysis.halting import compute_halting, plot_halting_heatmap
    try:
        images, names, _ = load_analysis_set(model, source, files)
        i = names.index(name) if name in names else 0
        return plot_halting_heatmap(compute_halting(model, images[i]))
    except Exception as err:
        raise user_error(err) from None


def report_view(model, source: str, files, epsilon: float, model_desc: str, progress=gr.Progress()):
    from analysis.report import build_report
    try:
        eps, _, _ = inf.check_request(model, epsilon, None)
        progress(0.05, desc="loading images")
        images, names, _ = load_analysis_set(model, source, files)
        progress(0.2, desc="running every analysis (this takes a while)")
        out = new_download_dir("report")
        path = build_report(model, images, names, out / "report.html", epsilon=eps, n_boot=200,
                            model_desc=model_desc, data_desc=f"{len(names)} images ({source})")
        archive = shutil.make_archive(str(out / "report_data"), "zip", root_dir=out,
                                      base_dir=f"{Path(path).stem}_data")
    except Exception as err:
        raise user_error(err) from None
    return [str(path), archive], f"Report written: {len(names)} images (HTML + CSVs in a zip)."


# ----------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class TokenizeTab:
    """The Tokenize tab's visible components that its events read and write."""
    image: Any
    epsilon: Any
    budget: Any
    outputs: list  # slider, kc, ckc, metrics, heat, halting, curve, kept, notices (tokenize_page's order)


def _tokenize_controls(c, bins: list[float], examples: list[str]) -> tuple:
    """The Tokenize tab's left column: image, epsilon, budget, notices, examples."""
    image = SafeImage(type="filepath", image_mode=None, sources=["upload", "clipboard"],  # shown whole
                      label=f"Image (the model sees its centre square at {c.image_size}x{c.image_size})",
                      height=300, elem_id="input-image")
    epsilon = SafeSlider(bins[0], bins[-1], value=0.05, step=0.005, label="epsilon",
                        info="target pixel L1; rounded up to the next loss bin "
                             f"({', '.join(f'{b:g}' for b in bins)})",
                        elem_id="epsilon-slider")
    # Above the trained budget tokens never halt (check_request clamps it).
    budget = SafeSlider(1, c.max_tokens, value=c.max_tokens, step=1,
                        label="token budget", info=f"the model was trained with up to "
                                                  f"{c.max_tokens} tokens",
                        elem_id="budget-slider")
    notices = gr.Markdown(_NO_IMAGE, elem_id="notices")
    if examples:
        gr.Examples(examples=[[p] for p in examples], inputs=[image], examples_per_page=16,
                    label="Examples: photos, then procedural images of rising complexity")
    return image, epsilon, budget, notices


def _tokenize_layout(c, bins: list[float], examples: list[str]) -> TokenizeTab:
    """The Tokenize tab's components, placed (no events)."""
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            image, epsilon, budget, notices = _tokenize_controls(c, bins, examples)
        with gr.Column(scale=3, min_width=400):
            slider = gr.ImageSlider(label="model input (centre square) | reconstruction", type="numpy",
                                    height=360, format="png", elem_id="result-slider",
                                    buttons=["download", "fullscreen"], interactive=False)
            with gr.Row():
                # Text boxes, empty with a hint until there is a result: gr.Number's
                # frontend shows "0" for no value, which reads as a result.
                kc = gr.Textbox("", label="Tokens used (KC-hat)", interactive=False, max_lines=1,
                                placeholder="no image yet", elem_id="kc-hat")
                ckc = gr.Textbox("", label="Continuous complexity sum(1 - p)", interactive=False,
                                 max_lines=1, placeholder="no image yet", elem_id="continuous-kc")
            metrics = gr.Markdown(elem_id="metrics")
    with gr.Row():
        heat = gr.Image(label=f"|error| per pixel (black 0, yellow >= {inf.ERROR_VMAX:g})",
                        type="numpy", format="png", interactive=False, height=300,
                        buttons=["download", "fullscreen"])
        halting = gr.Plot(_placeholder_figure(), label="halting probability per token",
                          elem_id="halting-plot")
    with gr.Row():
        curve = gr.Plot(_placeholder_figure(), label="KC-hat vs epsilon for this image",
                        elem_id="curve-plot")
        kept = gr.JSON(label="kept tokens (positions; codebook ids for quantised models)", open=True)
    return TokenizeTab(image, epsilon, budget, [slider, kc, ckc, metrics, heat, halting, curve, kept, notices])


def _tokenize_events(model, tab: TokenizeTab, run_model: dict) -> None:
    """Every event of the Tokenize tab: the page's own, and the /tokenize and /complexity APIs."""
    image, epsilon, budget, outputs = tab.image, tab.epsilon, tab.budget, tab.outputs
    # The page: a bad input clears the outputs and is shown once, in the notices.
    # /tokenize (below) fills the same components but returns the two numbers as
    # numbers (hidden gr.Number outputs) for API clients.
    gr.on([image.change, epsilon.change, budget.change],
          lambda i, e, b: tokenize_page(model, i, e, b), inputs=[image, epsilon, budget],
          outputs=outputs, trigger_mode="always_last", show_progress="full",
          api_visibility="private", **run_model)

    # API only (hidden components). /tokenize: the page's outputs; a bad input raises
    # (gradio_client's AppError). /complexity: JSON for scripts.
    with gr.Row(visible=False):
        t_btn = gr.Button("tokenize")
        t_kc = gr.Number(label="KC-hat", precision=0)
        t_ckc = gr.Number(label="continuous KC")
        c_file = gr.File(type="filepath", label="image")
        c_eps = SafeNumber(value=0.05, label="epsilon")
        c_budget = SafeNumber(value=model.config.max_tokens, label="budget", precision=0)
        c_out = gr.JSON()
        c_btn = gr.Button("complexity")
    t_btn.click(lambda i, e, b: tokenize_view(model, i, e, b), inputs=[image, epsilon, budget],
                outputs=[outputs[0], t_kc, t_ckc, *outputs[3:]], api_name="tokenize",
                api_description="Tokenize one image: (original, reconstruction), KC-hat, continuous "
                                "KC, metrics table, error heatmap, halting plot, KC-hat curve, kept "
                                "tokens, notices.", **run_model)
    c_btn.click(lambda f, e, b: complexity_view(model, f, e, b), inputs=[c_file, c_eps, c_budget],
                outputs=c_out, api_name="complexity",
                api_description="JSON {kc_hat, continuous_kc, l1, psnr, ssim, lpips, epsilon, "
                                "epsilon_bin, budget} of one image.", **run_model)


def _tokenize_tab(model, bins: list[float], examples: list[str], run_model: dict) -> TokenizeTab:
    with gr.Tab("Tokenize"):
        tab = _tokenize_layout(model.config, bins, examples)
        _tokenize_events(model, tab, run_model)
    return tab


def _batch_tab(model, bins: list[float], run_model: dict) -> None:
    c = model.config
    with gr.Tab("Batch"):
        with gr.Row():
            with gr.Column(scale=2):
                b_files = gr.File(file_count="multiple", file_types=["image", ".zip"],
                                  label="Images or zips", type="filepath", elem_id="batch-files")
                b_eps = SafeSlider(bins[0], bins[-1], value=0.05, step=0.005, label="epsilon")
                b_budget = SafeSlider(1, c.max_tokens, value=c.max_tokens, step=1, label="token budget")
                b_lpips = gr.Checkbox(False, label="LPIPS too (slower)")
                b_run = gr.Button("Tokenize all", variant="primary")
            with gr.Column(scale=3):
                b_summary = gr.Markdown()
                b_hist = gr.Plot(label="KC-hat histogram")
                b_csv = gr.File(label="CSV download", interactive=False)
        b_table = gr.Dataframe(label="per image", interactive=False, max_height=400)
        b_gallery = gr.HTML()
        b_run.click(lambda *a, progress=gr.Progress(): batch_view(model, *a, progress=progress),
                    inputs=[b_files, b_eps, b_budget, b_lpips],
                    outputs=[b_table, b_hist, b_csv, b_gallery, b_summary],
                    api_visibility="private", **run_model)


def _analysis_tab(model, bins: list[float], run_model: dict, card_text: str, server_paths: bool) -> None:
    """Analyses of an image set (plots, HTML report) and the human-complexity panel."""
    with gr.Tab("Analysis"):
        with gr.Row():
            with gr.Column(scale=2):
                a_source = gr.Radio([("probe images (noise, chessboard, photo, fractal)", "probes"),
                                     ("bundled examples", "examples"), ("my uploads", "uploads")],
                                    value="probes", label="image set")
                a_files = gr.File(file_count="multiple", file_types=["image", ".zip"],
                                  label=f"uploads (up to {MAX_ANALYSIS_IMAGES} images)", type="filepath",
                                  elem_id="analysis-files")
                a_eps = SafeSlider(bins[0], bins[-1], value=0.05, step=0.005, label="epsilon (KC-hat, Delta)")
                a_run = gr.Button("Run analyses", variant="primary")
                a_report = gr.Button("Build HTML report")
                a_status = gr.Markdown()
                a_file = gr.File(label="report download", interactive=False, file_count="multiple")
            with gr.Column(scale=3):
                a_sweep = gr.Plot(label="structure vs noise: quality vs tokens")
                a_delta = gr.Plot(label="KC-hat vs Delta")
        with gr.Row():
            a_curve = gr.Plot(label="KC-hat vs epsilon over the set")
            with gr.Column():
                a_pick = gr.Dropdown(choices=[], label="halting heatmap of", interactive=True)
                a_heat = gr.Plot(label="halting heatmap")
        a_run.click(lambda s, f, e, progress=gr.Progress(): analysis_view(model, s, f, e, progress),
                    inputs=[a_source, a_files, a_eps],
                    outputs=[a_sweep, a_delta, a_curve, a_pick, a_heat, a_status],
                    api_visibility="private", **run_model)
        a_pick.input(lambda s, f, n: heatmap_view(model, s, f, n), inputs=[a_source, a_files, a_pick],
                     outputs=a_heat, api_visibility="private", **run_model)
        a_report.click(lambda s, f, e, progress=gr.Progress(): report_view(model, s, f, e, card_text, progress),
                       inputs=[a_source, a_files, a_eps], outputs=[a_file, a_status],
                       api_visibility="private", **run_model)
        from app.human import build_human_panel  # issue 14: KC-hat vs Savoias human scores
        build_human_panel(model, run_model, server_paths)


def build_demo(model, examples_dir: str | Path | None = EXAMPLES_DIR, banner: str | None = None,
               loaded_from: str = "model", queue_size: int = QUEUE_MAX_SIZE,
               server_paths: bool = False) -> gr.Blocks:
    """The app around ``model`` (a KARL in eval mode). Launch with :func:`launch_demo`.

    ``queue_size``: waiting requests beyond it are refused ("queue full"), a bound on memory.
    ``server_paths``: whether the human panel reads folders on the server (app.py turns it on
    only for a loopback host without --share, or with --allow-server-paths)."""
    model.eval()
    use_figure_template()  # the app's figures build ~10 ms faster each (analysis._common.figure_style)
    bins = list(model.config.loss_bins)
    examples = sorted(str(p) for p in Path(examples_dir).glob("*.png")) if examples_dir else []
    run_model = dict(concurrency_id=CONCURRENCY_ID, concurrency_limit=1)

    with KarlBlocks(title="KARL studio", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(_INTRO)
        if banner:
            gr.Markdown(f"⚠️ {banner}", elem_classes=["karl-banner"], elem_id="model-banner")
        gr.Markdown(_model_card(model, loaded_from), elem_id="model-card")
        _tokenize_tab(model, bins, examples, run_model)
        _batch_tab(model, bins, run_model)
        _analysis_tab(model, bins, run_model, _model_card(model, loaded_from, markdown=False), server_paths)
        from app.tokens_tab import build_tokens_tab  # issue 17: what each token encodes
        build_tokens_tab(model, run_model, examples)

    demo.queue(default_concurrency_limit=1, max_size=int(queue_size))
    return demo


def launch_demo(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
                prevent_thread_lock: bool = False, quiet: bool = False):
    """Launch with the app's limits: upload size, theme, CSS, downloads folder allowed."""
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=f"{inf.MAX_UPLOAD_MB}mb",
                       prevent_thread_lock=prevent_thread_lock, quiet=quiet, css=CSS, theme=gr.themes.Soft(),
                       allowed_paths=[str(download_dir())], show_error=False, ssr_mode=False)
