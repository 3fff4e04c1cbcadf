"""A trained model in other runtimes: ``generator`` (the one-step generator as a ``torch.export`` program),
``onnx_export``, ``onnx_runtime`` and ``onnx_quantize`` (ONNX files, run in onnxruntime, int8) and
``diffusers_pipeline`` (``PixelMeanFlowPipeline``, also importable as ``pmf.diffusers``). The hub folder is a
checkpoint format: ``pmf.checkpoints.hub``."""
