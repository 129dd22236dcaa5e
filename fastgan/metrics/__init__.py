"""Sample-quality metrics of the papers' experiments: Goodfellow et al.'s Parzen-window log-likelihood and,
for the Gaussian mixtures, mode coverage and the high-quality-sample fraction; Roth et al.'s cross-testing of
two models' discriminators; the Fréchet distance and classifier score (FID's and the Inception score's formulas,
which NTGAN and DFM report) for any features, and on Fashion-MNIST with fastgan's shipped classifier."""
from .classifier import FashionMNISTNet, load_fmnist_classifier
from .cross_test import confusion, cross_test, real_fraction
from .frechet import classifier_score, frechet_distance, gaussian_stats
from .image_scores import classify, fmnist_scores, real_stats
from .mixture import mode_metrics
from .parzen import parzen_log_likelihood, parzen_score, select_sigma

__all__ = ["FashionMNISTNet", "load_fmnist_classifier", "confusion", "cross_test", "real_fraction",
           "classifier_score", "frechet_distance", "gaussian_stats", "classify", "fmnist_scores", "real_stats",
           "mode_metrics", "parzen_log_likelihood", "parzen_score", "select_sigma"]
