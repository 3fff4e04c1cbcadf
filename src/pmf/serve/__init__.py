"""``pmf serve``: one-step generation as an HTTP API and a web page, with dynamic batching.

``batcher`` merges the images of concurrent requests into shared forward passes (each image keeps its own
noise, so batching never changes an image); ``app`` is the FastAPI application (routes, validation);
``encode`` writes the response bodies; ``static/`` holds the page. The class names of a checkpoint are
``pmf.class_choice``'s (re-exported here as ``class_names``)."""

from ..class_choice import class_names
from .batcher import Batcher, ImageJob, ServerBusy

__all__ = ["Batcher", "ImageJob", "ServerBusy", "class_names", "create_app"]


def create_app(*args, **kwargs):
    """The FastAPI application (``pmf.serve.app.create_app``); needs ``pip install 'pixel-meanflow[serve]'``."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
