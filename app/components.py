"""Gradio components whose input checks are the app's own (:func:`app.inference.check_request`,
:func:`app.inference.prepare_image`), so every entry point answers bad input with the same
one-line message instead of Gradio's generic error.

- :class:`SafeImage`: an image upload passed on as its file path, undecoded; the handler
  decodes it with clear errors (not an image, empty, truncated, too large).
- :class:`SafeSlider`, :class:`SafeNumber`: pass the raw value on. Stock ones refuse a
  value outside the slider's range (``/tokenize`` with epsilon 0.5) or fail on a string
  with a bare ``ValueError``; the app's rule is "above the trained range: use its end,
  with a notice; not a finite number: a clear error".

- :class:`KarlBlocks`: ``gr.Blocks`` whose refusal of a file the app did not receive as an
  upload (an API call whose FileData names ``/etc/passwd``) says so: Gradio refuses it
  before any component sees the input, and with ``show_error=False`` it answered
  ``{"error": null}``.

Each component renders with the stock frontend (``is_template``). Gradio's component metaclass
writes a ``.pyi`` stub next to the module defining any component subclass (into the
source tree, on every start); :func:`_no_stub_files` switches that off while these
classes are created.
"""

from __future__ import annotations

import contextlib
from typing import Any

import gradio as gr

__all__ = ["SafeImage", "SafeSlider", "SafeNumber", "KarlBlocks", "REFUSED_PATH"]

REFUSED_PATH = ("Refused a file path: the app reads only files uploaded to it (with gradio_client, "
                "pass handle_file(path), which uploads the file).")


@contextlib.contextmanager
def _no_stub_files():
    """Create component classes without writing ``app/components.pyi``."""
    try:
        import gradio.component_meta as meta
    except ImportError:  # pragma: no cover - another Gradio layout: nothing to switch off
        yield
        return
    original = getattr(meta, "create_or_modify_pyi", None)
    if original is None:  # pragma: no cover
        yield
        return
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = original


with _no_stub_files():
    class SafeImage(gr.Image):
        """``gr.Image`` (``type="filepath"``) that hands the upload's path to the handler undecoded."""

        is_template = True

        def preprocess(self, payload) -> str | None:
            if payload is None:
                return None
            path = getattr(payload, "path", None)
            if self.type != "filepath" or path is None:  # not how the app uses it: stock behaviour
                return super().preprocess(payload)
            return str(path)

    class SafeSlider(gr.Slider):
        """``gr.Slider`` that passes any value on; the handler applies the app's range rule."""

        is_template = True

        def preprocess(self, payload: Any) -> Any:
            return payload

    class SafeNumber(gr.Number):
        """``gr.Number`` that passes any value on (strings, NaN, infinity) to the handler."""

        is_template = True

        def preprocess(self, payload: Any) -> Any:
            return payload


class KarlBlocks(gr.Blocks):
    """``gr.Blocks`` that answers a refused file path with :data:`REFUSED_PATH` (no path echoed
    back, nothing said about whether it exists on the server)."""

    async def preprocess_data(self, *args, **kwargs):
        from gradio.exceptions import InvalidPathError
        try:
            return await super().preprocess_data(*args, **kwargs)
        except InvalidPathError:
            raise gr.Error(REFUSED_PATH, print_exception=False) from None
