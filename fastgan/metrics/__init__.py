"""Sample-quality metrics of the papers' experiments: Goodfellow et al.'s Parzen-window log-likelihood and,
for the Gaussian mixtures, mode coverage and the high-quality-sample fraction."""
from .mixture import mode_metrics
from .parzen import parzen_log_likelihood, parzen_score, select_sigma

__all__ = ["mode_metrics", "parzen_log_likelihood", "parzen_score", "select_sigma"]
