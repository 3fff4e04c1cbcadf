"""Evaluation (spec section 7): ``evaluate`` (sampling sweeps and FID), ``frechet`` (the Frechet distance),
``inception`` (the FID network), ``offline_score`` (a score for built-in datasets without Inception weights),
``feature_metrics`` (precision/recall and more), ``metric_plan`` (``pmf eval --metrics``), ``reference``
(reference statistics files) and ``representations`` (the feature extractors, shared with ``pmf.posttrain``)."""
