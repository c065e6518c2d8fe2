"""jaxsoft: a small functional JAX kit for the probability toolbox behind softmax attention."""

__version__ = "0.1.0"

from jaxsoft import attention, distributions, mle, montecarlo, qmc
from jaxsoft.attention import (
  AttentionResult,
  init_multi_head_attention,
  multi_head_attention,
  scaled_dot_product_attention,
)
from jaxsoft.losses import (
  AdaptiveSoftmaxOutput,
  adaptive_log_prob,
  adaptive_log_softmax,
  cross_entropy,
  entropy,
  generalized_kl_divergence,
  init_adaptive_softmax,
  kl_divergence,
  linear_cross_entropy,
  nll_loss,
  sampled_softmax_cross_entropy,
)
from jaxsoft.mle import MLEResult, aic, bic, confidence_intervals, fit, fit_distribution
from jaxsoft.montecarlo import (
  ISResult,
  MCResult,
  ToleranceResult,
  confidence_interval,
  expectation,
  gaussian_transform,
  importance_sampling,
  integrate,
  integrate_to_tolerance,
)
from jaxsoft.qmc import halton, lattice, sobol
from jaxsoft.softmax import log_softmax, logsumexp, softmax

__all__ = [
  "__version__",
  "attention",
  "AttentionResult",
  "init_multi_head_attention",
  "multi_head_attention",
  "scaled_dot_product_attention",
  "MLEResult",
  "aic",
  "bic",
  "confidence_intervals",
  "distributions",
  "fit",
  "fit_distribution",
  "mle",
  "montecarlo",
  "qmc",
  "ISResult",
  "MCResult",
  "ToleranceResult",
  "confidence_interval",
  "expectation",
  "gaussian_transform",
  "importance_sampling",
  "integrate",
  "integrate_to_tolerance",
  "halton",
  "lattice",
  "sobol",
  "cross_entropy",
  "entropy",
  "kl_divergence",
  "generalized_kl_divergence",
  "nll_loss",
  "linear_cross_entropy",
  "sampled_softmax_cross_entropy",
  "AdaptiveSoftmaxOutput",
  "adaptive_log_softmax",
  "adaptive_log_prob",
  "init_adaptive_softmax",
  "log_softmax",
  "logsumexp",
  "softmax",
]
