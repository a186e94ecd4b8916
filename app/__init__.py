"""KARL studio's Gradio app: inference helpers (:mod:`app.inference`, :mod:`app.batch`) and
the UI (:mod:`app.ui`). ``build_demo`` is imported lazily so that ``import app`` does not
pull in gradio."""

__all__ = ["build_demo", "launch_demo"]


def build_demo(*args, **kwargs):
    """See :func:`app.ui.build_demo`."""
    from app.ui import build_demo as _build
    return _build(*args, **kwargs)


def launch_demo(*args, **kwargs):
    """See :func:`app.ui.launch_demo`."""
    from app.ui import launch_demo as _launch
    return _launch(*args, **kwargs)
