"""Evaluation (spec section 7): ``evaluate`` (sampling and scoring one setting; the grid, its table and plot),
``sweep`` (a sweep over settings and EMAs that keeps the best), ``frechet`` (the Frechet distance),
``inception`` (the FID network), ``offline_score`` (a score for built-in datasets without Inception weights),
``feature_metrics`` (precision/recall and more), ``metric_plan`` (``pmf eval --metrics``), ``reference``
(reference statistics files) and ``representations`` (the feature extractors, shared with ``pmf.posttrain``)."""
