"""Shared pytest configuration: one hypothesis profile for the whole suite.

``deadline=None``: the shared CI machine has noisy timings, and a per-example deadline would turn load into
flaky failures. ``max_examples=50`` keeps property tests fast; ``HYPOTHESIS_PROFILE=thorough`` runs 500.
"""

from __future__ import annotations

import os

import pytest

try:
    from hypothesis import settings
except ImportError:  # hypothesis is a dev extra; tests that need it import it themselves
    settings = None

if settings is not None:
    settings.register_profile("softgate", deadline=None, max_examples=50)
    settings.register_profile("thorough", deadline=None, max_examples=500)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "softgate"))


@pytest.fixture(scope="session")
def tiny_random_model(tmp_path_factory) -> str:
    """A 2-layer random Llama with the project's tokenizer: fast, and independent of the shipped checkpoint."""
    from softgate.pretrain import PretrainConfig, build_model
    from softgate.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny_random")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, PretrainConfig(hidden_size=32, num_layers=2, num_heads=2,
                                                  intermediate_size=64, max_positions=256))  # room for GSM8K prompts
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)
