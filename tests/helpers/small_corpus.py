"""A four-language corpus of man-page-like documents, written as the JSONL `bench --real-text` reads."""

from __future__ import annotations

import json
from pathlib import Path

DOCUMENTS = [
    ("en", "NAME\n\npkeys - overview of Memory Protection Keys\n\nDESCRIPTION\n\n" + "Keys tag pages. " * 40),
    ("de", "NAME\n\nsplit - eine Datei in Teile aufteilen\n\nBESCHREIBUNG\n\n" + "Größe und Teile. " * 40),
    ("zh", "名称\n\n向量检索把文本变成高维向量的工具\n\n描述\n\n" + "相似的文本在向量空间里彼此靠近。" * 30),
    ("ja", "名前\n\n埋め込みモデルは文章をベクトルに変換します\n\n説明\n\n" + "文章をベクトルに。" * 30),
]
"""``(language, text)`` of each document."""


def write_corpus(folder: Path) -> Path:
    """:data:`DOCUMENTS` as ``folder/corpus.jsonl`` (``{"id", "lang", "text"}`` lines); its path."""
    path = folder / "corpus.jsonl"
    rows = [{"id": f"{lang}/{i}", "lang": lang, "text": text} for i, (lang, text) in enumerate(DOCUMENTS)]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path
