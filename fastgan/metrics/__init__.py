"""Sample-quality metrics of the papers' experiments: Goodfellow et al.'s Parzen-window log-likelihood and,
for the Gaussian mixtures, mode coverage and the high-quality-sample fraction; Roth et al.'s cross-testing of
two models' discriminators."""
from .cross_test import confusion, cross_test, real_fraction
from .mixture import mode_metrics
from .parzen import parzen_log_likelihood, parzen_score, select_sigma

__all__ = ["confusion", "cross_test", "real_fraction", "mode_metrics", "parzen_log_likelihood", "parzen_score",
           "select_sigma"]
