"""Generative-model metrics (Fréchet distance, kernel distance, precision/recall:
:mod:`~worldmodels.metrics.generative`) and the in-project feature networks they are
computed in (:mod:`~worldmodels.metrics.features`)."""
