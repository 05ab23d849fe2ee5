"""Builders of small, offline, deterministic models for tests.

Nothing here touches the network: the tokenizer is trained on a built-in corpus and the
weights are random (seeded), so a build takes about a second and is identical every time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

EOS = "<|endoftext|>"

# Qwen2/Qwen3's pre-tokenizer split, so the tiny tokenizer cuts text like the real one.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CORPUS = [
    "Streaming ingestion reads document events from Kafka and writes embeddings to Milvus.",
    "Each embedder actor holds the model on one GPU and batches texts by token budget.",
    "Matryoshka embeddings keep their meaning when cut to the first few dimensions.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "Numbers like 3.14159, 2718 and 42 appear in text; so do e-mails (a@b.example) and URLs.",
    "Unicode matters too: café, naïve, Größe, 東京, Москва, and emoji 😀🚀 must round-trip.",
    "Qwen3 embedding models pool the hidden state of the last token, the end-of-text token.",
    "Mean pooling averages every token state under the attention mask.",
    "def embed(texts):\n    return model.encode(texts, normalize_embeddings=True)\n",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.",
]


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer with Qwen3's normalizer, pre-tokenizer and EOS template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus gives the trainer enough pair counts to learn a few hundred merges.
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    # Qwen3-Embedding's tokenizer.json appends <|endoftext|> to every sequence; the model pools it.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {EOS}:0",
        pair=f"$A:0 {EOS}:0 $B:1 {EOS}:1",
        special_tokens=[(EOS, eos_id)],
    )
    return tokenizer


def build_tiny_qwen3(path: Path, *, seed: int = 0, vocab_size: int = 500, max_positions: int = 512) -> Path:
    """Write a tiny random Qwen3 model and its tokenizer to ``path`` (created) and return ``path``.

    The folder loads with ``AutoModel``/``AutoTokenizer`` like a real Qwen3-Embedding checkpoint:
    ``model_type`` qwen3, ``<|endoftext|>`` as EOS and PAD, a post-processor that appends it to every
    input, left padding.  Same arguments, same bytes.
    """
    path.mkdir(parents=True, exist_ok=True)
    backend = _train_tokenizer(vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        padding_side="left",
        model_max_length=max_positions,
    )
    tokenizer.save_pretrained(path)
    # Load it the way Qwen3-Embedding's tokenizer loads: transformers 5 rebuilds a Qwen2Tokenizer
    # from vocab and merges and keeps only the post-processor of tokenizer.json.
    config_file = path / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["tokenizer_class"] = "Qwen2Tokenizer"
    config_file.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True))

    eos_id = backend.token_to_id(EOS)
    config = Qwen3Config(
        vocab_size=backend.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=max_positions,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3Model(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return path


def write_sentence_transformers_layout(
    model_dir: Path, dest: Path, *, pooling_mode: str, subfolder: str = "0_Transformer"
) -> Path:
    """Copy a plain Transformers folder into a sentence-transformers layout at ``dest``.

    The Transformer module lives in ``subfolder`` ("" = the root, like Qwen3-Embedding), followed by
    a Pooling module with ``pooling_mode`` (sentence-transformers' name, e.g. "lasttoken") and a
    Normalize module.
    """
    transformer_dir = dest / subfolder if subfolder else dest
    shutil.copytree(model_dir, transformer_dir, dirs_exist_ok=True)
    (transformer_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    hidden = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    pooling_dir = dest / "1_Pooling"
    pooling_dir.mkdir(parents=True, exist_ok=True)
    (pooling_dir / "config.json").write_text(
        json.dumps({"embedding_dimension": hidden, "pooling_mode": pooling_mode, "include_prompt": True})
    )
    modules = [
        {"idx": 0, "name": "0", "path": subfolder, "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (dest / "modules.json").write_text(json.dumps(modules, indent=2))
    return dest


# Texts of varied length and script that the model tests embed.
SAMPLE_TEXTS = [
    "Hello world.",
    "A somewhat longer sentence about streaming document ingestion into a vector database.",
    "Unicode: café, naïve, Größe, 東京, Москва, emoji 😀🚀.",
    " ".join(["Matryoshka embeddings stay meaningful when cut to their first dimensions."] * 12),
    "x",
]


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_lora_adapter(base: Path, folder: Path, *, seed: int, **config: object) -> Path:
    """A random (non-zero B) LoRA adapter on the model in ``base``, saved as PEFT saves it (needs peft)."""
    import peft
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_pretrained(base, dtype=torch.float32)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False, **config)
    peft.get_peft_model(model, lora).save_pretrained(folder)
    return folder
