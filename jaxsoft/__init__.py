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
  cross_entropy,
  entropy,
  kl_divergence,
  linear_cross_entropy,
  nll_loss,
  sampled_softmax_cross_entropy,
)
from jaxsoft.mle import (
  MLEResult,
  TestResult,
  aic,
  bic,
  confidence_intervals,
  fit,
  fit_distribution,
  likelihood_ratio_test,
  profile_confidence_intervals,
  score_test,
  wald_test,
)
from jaxsoft.montecarlo import (
  ISResult,
  MCResult,
  ToleranceResult,
  confidence_interval,
  expectation,
  importance_sampling,
  integrate,
  integrate_to_tolerance,
)
from jaxsoft.qmc import halton, sobol
from jaxsoft.softmax import log_softmax, logsumexp, softmax

__all__ = [
  "__version__",
  "attention",
  "AttentionResult",
  "init_multi_head_attention",
  "multi_head_attention",
  "scaled_dot_product_attention",
  "MLEResult",
  "TestResult",
  "aic",
  "bic",
  "confidence_intervals",
  "profile_confidence_intervals",
  "likelihood_ratio_test",
  "wald_test",
  "score_test",
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
  "importance_sampling",
  "integrate",
  "integrate_to_tolerance",
  "halton",
  "sobol",
  "cross_entropy",
  "entropy",
  "kl_divergence",
  "nll_loss",
  "linear_cross_entropy",
  "sampled_softmax_cross_entropy",
  "log_softmax",
  "logsumexp",
  "softmax",
]
