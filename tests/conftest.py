import os

# Hypothesis: deterministic and bounded so the suite stays fast on 2 cores.
from hypothesis import settings

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
