"""The Kafka side and the orchestration of embedstream; never imports torch or transformers.

Subpackages, from the ground up (each imports only those before it, plus :mod:`workers` for the
pool, the model's description and the shared errors):

* :mod:`pipeline.settings`, :mod:`pipeline.documents` — all settings; the write/hit vocabulary.
* :mod:`pipeline.ingest` — events in, chunked units, the consumer loop, offsets, dead letters.
* :mod:`pipeline.milvus` — the dimension replicas: schema, rows, the sink, Milvus errors.
* :mod:`pipeline.search` — replica and funnel search, routing, the HTTP API.
* :mod:`pipeline.runtime` — assembling and running a consumer, consumer actors, autoscaling, serving.
* :mod:`pipeline.ops` — the local dev stack, its processes, ``status``.
* :mod:`pipeline.tools` — demo, benchmarks, eval-recall and their corpora.

:mod:`pipeline.cli` parses the command line and dispatches to them.
"""
