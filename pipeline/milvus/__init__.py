"""The dimension replicas in Milvus: one collection per Matryoshka dimension.

Owns the connection and its error translation (``connection``, ``errors``), the collection
schema and index (``schema``), write planning and limits (``rows``), filter expressions
(``expr``), the :class:`~pipeline.milvus.sink.MilvusSink` and the write-time metric.

May import :mod:`pipeline.settings`, :mod:`pipeline.documents` and :mod:`workers.errors`;
never Kafka, Ray or the model.
"""
