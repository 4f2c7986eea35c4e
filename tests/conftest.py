import os
import sys

import pytest
import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

# CI draws the same examples every run (a red run is then a regression, not a new
# draw); HYPOTHESIS_PROFILE=explore searches afresh with more examples, and what it
# finds is pinned with @example.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
