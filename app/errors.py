"""What a visitor sees when a handler fails: the app's one rule, in a leaf module that the
tabs (``ui``, ``human``, ``tokens_tab``) import without importing each other."""

from __future__ import annotations

import logging
import traceback

import gradio as gr

log = logging.getLogger("karl.app")


def user_error(err: Exception) -> gr.Error:
    """Known input problems keep their message; anything else is logged and summarised."""
    if isinstance(err, gr.Error):
        return err
    from app.inference import InputError
    from karl.data.images import ImageLoadError
    if isinstance(err, (InputError, ImageLoadError)):
        return gr.Error(str(err), print_exception=False)
    log.error("internal error: %s", traceback.format_exc())
    return gr.Error(f"Internal error ({type(err).__name__}: {err}). The app is still running; "
                    "try another image or setting.", print_exception=False)
