"""Ingestion: from Kafka records to acknowledged, committed writes.

Owns the event contract (``events``, strict JSON decoding in ``event_json``), units of work
(``units``: parse, collapse per id, chunk), the chunker, embedding a unit on the pool
(``unit_embedder``), flow control (``flow``) and retries (``retry``), offset tracking
(``offsets``), the dead-letter topic (``dlq``) and its reason codes (``reasons``), the
consumer-group member (``consumer``) with its per-partition lanes (``lane``: dispatch, write in
offset order, acknowledge, close) and counters (``consumer_stats``), Kafka client options and
topics (``kafka``), the producer of ``produce`` and the consumer-side metrics (``metrics``).

May import :mod:`pipeline.settings`, :mod:`pipeline.documents`, and from :mod:`workers` only
errors, prompts, settings and metric specs; never Milvus, Ray, torch or transformers (the pool
is reached through the :class:`~pipeline.ingest.unit_embedder.Embedder` protocol, Milvus through
:class:`~pipeline.documents.Sink`).
"""
