"""Assembling and running the system on Ray: the consumer's runtime, consumer actors,
autoscaling, and the read side's query pool and HTTP server.

``ray_cluster`` joins a cluster, ``assemble`` starts the pool and resolves the replica dims once,
``ingestion`` runs ``run`` (``run_summary`` says what it measured), ``consumer_actors`` and
``autoscale`` scale it out, ``serving`` builds ``search``/``serve``/``eval-recall``'s side.  May
import everything in :mod:`pipeline` below it (ingest, milvus, search) and :mod:`workers`; never the
local dev stack (:mod:`pipeline.ops`).
"""
