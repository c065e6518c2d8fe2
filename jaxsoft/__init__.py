"""jaxsoft: a small functional JAX kit for the probability toolbox behind softmax attention."""

__version__ = "0.1.0"

__all__ = []
