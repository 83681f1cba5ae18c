"""Shared test settings: few threads, no network, small hypothesis budgets."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
settings.register_profile("ci", max_examples=40, deadline=None)
settings.load_profile("ci")
