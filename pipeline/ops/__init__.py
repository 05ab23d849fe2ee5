"""Operating it locally: the embedded dev stack (broker, Milvus Lite, Ray head) of ``up``/``down``,
its managed processes, and ``status`` / ``status --watch``.

May import :mod:`pipeline.ingest` (Kafka clients), :mod:`pipeline.milvus` (connections) and
:mod:`pipeline.runtime` (joining Ray); nothing in the production path imports it.
"""
