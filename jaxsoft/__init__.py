"""jaxsoft: a small functional JAX kit for the probability toolbox behind softmax attention."""

__version__ = "0.1.0"

from jaxsoft.losses import cross_entropy, entropy, kl_divergence, nll_loss
from jaxsoft.softmax import log_softmax, logsumexp, softmax

__all__ = [
  "__version__",
  "cross_entropy",
  "entropy",
  "kl_divergence",
  "nll_loss",
  "log_softmax",
  "logsumexp",
  "softmax",
]
