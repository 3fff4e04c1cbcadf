"""``pmf.diffusers``: the diffusers pipeline under its first name. It lives in ``pmf.export.diffusers_pipeline``;
this module only re-exports ``PixelMeanFlowPipeline`` and ``PMFTransformer2DModel`` from there (absolute imports,
so the name never stands for the ``diffusers`` package)."""

from pmf.export.diffusers_pipeline import PixelMeanFlowPipeline, PMFTransformer2DModel

__all__ = ["PMFTransformer2DModel", "PixelMeanFlowPipeline"]
