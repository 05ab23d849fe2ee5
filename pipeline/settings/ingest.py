"""Settings of the ingest side: Kafka, the consumer loop's bounds, chunking."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from pipeline.settings.base import Section, read_secret


class KafkaSettings(Section):
    """How the consumers and producers reach Kafka, and which topics they use."""

    _ordered = (("heartbeat_interval_ms", "session_timeout_ms", True),)
    _secret_files = (("sasl_password", "sasl_password_file"),)
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list of brokers.")
    topic: str = Field("documents", description="Topic the document events are read from.")
    group_id: str = Field("embedstream", description="Consumer group of the ingestion consumers.")
    dlq_topic: str = Field("documents.dlq", description="Topic of the events that cannot be ingested.")
    dlq_max_record_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Most key + value bytes of one dead-letter record (keep under the broker's "
        "message.max.bytes); a larger rejected event is dead-lettered cut to fit, with a "
        "'truncated_from' header.",
    )
    partitions: int = Field(4, ge=1, description="Partitions of the topic when the worker creates it.")
    dlq_partitions: int | None = Field(
        None,
        ge=1,
        description="Partitions of the dead-letter topic when the worker creates it; default: partitions.",
    )
    replication_factor: int | None = Field(
        None,
        ge=1,
        description="Replicas of each topic the worker creates (event and dead-letter topics); default: "
        "min(3, brokers in the cluster), logged when under 3. More than the cluster's brokers is refused "
        "before anything is created.",
    )
    dlq_retry_s: float = Field(
        300.0,
        gt=0,
        description="How long a dead-letter send retries transient broker errors (timeouts, no leader, "
        "connection lost) before the worker stops; a permanent error (authorization, record too large, "
        "topic missing or invalid) stops it at once.",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group with no committed offset starts."
    )
    max_poll_records: int = Field(500, ge=1, description="Most records one poll returns.")
    session_timeout_ms: int = Field(
        10000,
        ge=1000,
        description="How long the group coordinator waits for a silent member (a killed consumer) "
        "before giving its partitions to the others; a restarted consumer waits that long too.",
    )
    heartbeat_interval_ms: int = Field(
        3000,
        ge=100,
        description="How often the consumer heartbeats; keep it under a third of the session timeout.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    sasl_password_file: Path | None = Field(
        None,
        description="File holding the SASL password instead of sasl_password, read by each process "
        "that connects (consumer actors read it on their own node).",
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle that signs the brokers' certificates.")
    ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Private key of the client certificate.")

    def sasl_secret(self) -> str | None:
        """The SASL password, from ``sasl_password`` or ``sasl_password_file``."""
        return read_secret(self.sasl_password, self.sasl_password_file, "kafka.sasl_password_file")


DEFAULT_MAX_UNIT_BYTES = 524288
"""The largest unit by default, whatever the in-flight budget: on one H200 a 0.6B pipeline with a
2,097,152-token budget ran at 89.9% of the bare actor with units of this size, where 2 MiB units (the
budget's figure, the default before) had left it at ~80% on an H100 (tests/perf/results/README.md)."""


ADAPTIVE_MIN_TOKENS = 131072
"""The adaptive in-flight budget's floor, and the budget before any unit was written."""
ADAPTIVE_MAX_TOKENS = 4194304
"""The adaptive in-flight budget's ceiling: it bounds a member's memory whatever the rate measured,
and is about 5 s of what one member's four chunk threads cut (~900k tokens/s of real text)."""
UNMEASURED_POLL_RECORDS = 16
"""The records a poll asks for before any unit was chunked: events may be documents of thousands of
tokens (a poll's 500 real-text records held 887k tokens against a 214k budget), and the first unit
built gives an estimate of an event's tokens."""


class ConsumerSettings(Section):
    """The Kafka consumer loop's bounds (section [consumer], formerly [worker])."""

    max_inflight_tokens: int | None = Field(
        None,
        ge=64,
        description="Tokens sent to the pool and not yet written; partitions pause above it. A poll asks "
        "for about the records that fill what is left (at the tokens an event held so far; "
        f"{UNMEASURED_POLL_RECORDS} before any unit was chunked), and units "
        "still being chunked count once chunked, so the tokens in flight pass it by about the 2 x "
        "chunk_threads units being built (each at most max_batch_events events and max_unit_bytes "
        "bytes). Default: adaptive, inflight_seconds of the tokens/s this member's units are written at, "
        f"between {ADAPTIVE_MIN_TOKENS} and {ADAPTIVE_MAX_TOKENS} tokens ({ADAPTIVE_MIN_TOKENS} until a "
        "rate is measured); a number fixes it.",
    )
    inflight_seconds: float = Field(
        5.0,
        gt=0,
        description="With max_inflight_tokens unset: the in-flight budget in seconds of the measured "
        "tokens/s (weighted over the last ~5 s with units in flight). Enough to keep the embedder busy "
        "while the next units are fetched and chunked (~1 s each); more lengthens drains and rebalances.",
    )
    max_batch_events: int = Field(256, ge=1, description="Most events of one partition handled as one unit.")
    max_unit_bytes: int | None = Field(
        None,
        ge=1,
        description="Most bytes of event values in one unit (an event larger than this is a unit of its "
        "own). A unit's tokens leave the in-flight budget only once all of it is written, and none of "
        "them reaches the GPU before the whole unit is chunked, so large units make the pipeline run in "
        "bursts that leave the GPU idle while the next ones are fetched and chunked. Default: the "
        "in-flight budget's figure in bytes when the records are cut (a unit then holds about a quarter "
        "of the budget in tokens: 3-4.5 bytes a token in Latin and CJK text), at most 524288 (~140k "
        "tokens, about a second of one chunk thread), however large the budget.",
    )
    chunk_threads: int | None = Field(
        None,
        ge=1,
        description="Threads of one consumer that build units (parse, chunk) at once, of one partition "
        "and of several; units are still written and committed in offset order. Default: min(4, CPU cores).",
    )
    max_request_tokens: int = Field(
        16384, ge=64, description="Most tokens in one embed call to the pool (a unit is split above it)."
    )
    send_token_ids: bool = Field(
        False,
        description="Send each chunk's token ids (counted by the chunker anyway) to the embedder actors "
        "with its text, so they do not tokenize it again (embedder.backend 'actors'; a remote endpoint "
        "always gets text). Off by default: measured once on one H100 with the 0.6B shape, it ran as fast "
        "as texts (the pipeline 83.9% of the bare actor against 81.8%: tests/perf/results/README.md); on, "
        "it saves the actors' tokenizer CPU.",
    )
    commit_interval_s: float = Field(1.0, gt=0, description="How often acknowledged offsets are committed.")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="Cap of the exponential backoff on retries.")
    shutdown_drain_s: float = Field(
        30.0, ge=0, description="On stop, how long units in flight may finish before they are dropped."
    )

    def largest_inflight_tokens(self) -> int:
        """The most tokens one member keeps in flight: :attr:`max_inflight_tokens`, or the adaptive
        budget's ceiling when it is unset."""
        return self.max_inflight_tokens or ADAPTIVE_MAX_TOKENS

    def unit_bytes(self, budget: int) -> int:
        """The effective :attr:`max_unit_bytes` while the in-flight budget is ``budget`` tokens."""
        return self.max_unit_bytes or min(budget, DEFAULT_MAX_UNIT_BYTES)


class ChunkingSettings(Section):
    """How long documents are split into rows."""

    max_tokens: int | None = Field(
        None,
        ge=16,
        description="Most tokens in one chunk (special tokens excluded); default: what the model takes, "
        "at most 512.",
    )
    overlap_tokens: int = Field(0, ge=0, description="Tokens repeated from the end of the previous chunk.")
