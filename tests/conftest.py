import os
import sys

import pytest
import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile("ci", max_examples=40, deadline=None)
settings.load_profile("ci")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
