from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: lm-eval metadata that keeps every lm-eval test's splits small.
SMALL_METADATA = {
    "iclvsft_train_size": 200,
    "iclvsft_test_size": 12,
    "iclvsft_test_broken_size": 12,
    "iclvsft_validation_size": 10,
}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama_wide(tmp_path_factory) -> Path:
    """A second tiny model, twice as wide (another size, same tokenizer), for runs of several models."""
    from tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-wide"), seed=1, hidden_size=64)


@pytest.fixture(autouse=True)
def _quiet_lm_eval():
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    yield
