"""`produce`: send JSONL event files, or .txt/.md documents, to the event topic.

JSONL lines are sent verbatim (the consumer validates them and dead-letters bad ones), keyed
by their ``id`` when the line parses.  A .txt/.md file becomes one upsert event whose id is
its path relative to the folder given on the command line (or its file name).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pipeline.ingest.kafka import ensure_topics, make_producer
from pipeline.settings import KafkaSettings

DOCUMENT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class OutgoingRecord:
    """One Kafka record to send."""

    key: bytes | None
    value: bytes


def iter_records(paths: Sequence[Path]) -> Iterator[OutgoingRecord]:
    """Records for ``paths``: JSONL files line by line, documents one event each, folders recursively."""
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.suffix in DOCUMENT_SUFFIXES:
                    yield _document(file, file.relative_to(path).as_posix())
                elif file.suffix == ".jsonl":
                    yield from _jsonl(file)
        elif path.suffix == ".jsonl":
            yield from _jsonl(path)
        elif path.suffix in DOCUMENT_SUFFIXES:
            yield _document(path, path.name)
        else:
            raise ValueError(f"{path}: expected a .jsonl, .txt or .md file, or a folder")


def count_records(paths: Sequence[Path]) -> int:
    """How many records :func:`iter_records` yields (for the progress bar)."""
    return sum(1 for _ in iter_records(paths))


def _document(path: Path, doc_id: str) -> OutgoingRecord:
    text = path.read_text(encoding="utf-8", errors="replace")
    event = {"op": "upsert", "id": doc_id, "text": text, "metadata": {"source": doc_id}}
    return OutgoingRecord(doc_id.encode(), json.dumps(event, ensure_ascii=False).encode())


def _jsonl(path: Path) -> Iterator[OutgoingRecord]:
    with path.open("rb") as lines:
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            yield OutgoingRecord(_key_of(line), line)


def _key_of(line: bytes) -> bytes | None:
    try:
        doc_id = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None
    return doc_id.encode("utf-8", "surrogatepass") if isinstance(doc_id, str) else None


class ProgressBar:
    """A one-line progress bar on a terminal stream; silent when the stream is not a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr) -> None:
        self._total = max(total, 1)
        self._label = label
        self._stream = stream
        self._live = stream.isatty()
        self._start = time.monotonic()
        self._last_draw = 0.0
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self._live and (now - self._last_draw > 0.1 or self.done >= self._total):
            self._last_draw = now
            filled = int(30 * self.done / self._total)
            rate = self.done / max(now - self._start, 1e-9)
            bar = "#" * filled + "." * (30 - filled)
            self._stream.write(f"\r{self._label} [{bar}] {self.done}/{self._total} {rate:,.0f}/s")
            self._stream.flush()

    def close(self) -> None:
        if self._live:
            self._stream.write("\n")
        elapsed = time.monotonic() - self._start
        self._stream.write(f"{self._label}: {self.done} in {elapsed:.1f}s\n")


async def send_records(
    kafka: KafkaSettings,
    records: Iterable[OutgoingRecord],
    topic: str | None = None,
    on_acked: Callable[[], None] | None = None,
) -> None:
    """Send ``records`` in order to ``topic`` (default the event topic) and wait until each is acked.

    At most 1,000 sends wait for their acknowledgement at a time; ``on_acked`` runs after each one.
    """
    producer = make_producer(kafka, max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        pending = []
        for record in records:
            pending.append(await producer.send(topic or kafka.topic, key=record.key, value=record.value))
            if len(pending) >= 1000:
                for future in pending:
                    await future
                    if on_acked is not None:
                        on_acked()
                pending.clear()
        for future in pending:
            await future
            if on_acked is not None:
                on_acked()
    finally:
        await producer.stop()


async def produce(kafka: KafkaSettings, paths: Sequence[Path], topic: str | None = None) -> int:
    """Send every record of ``paths`` to ``topic`` (default the event topic); returns how many were acked."""
    await ensure_topics(kafka)
    bar = ProgressBar(count_records(paths), "produced")
    try:
        await send_records(kafka, iter_records(paths), topic, bar.advance)
    finally:
        bar.close()
    return bar.done
