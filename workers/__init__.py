"""The Ray/GPU side of embedstream: embedder actors, their micro-batcher and the model.

Never imports aiokafka or :mod:`pipeline`.  Modules: ``errors`` (typed failures of both sides),
``settings`` (model, batching, pool), ``prompts`` (instruction formatting), ``actor`` (one model
behind a micro-batcher), ``batcher`` (requests in, rows out, one forward thread) with
``batch_queue`` (bounds, sorted windows, token budget), ``batch_budget`` (the budget lowered after an
out-of-memory), ``query_lane`` (queries first) and ``batcher_stats``, ``metrics``, ``pool`` (routing,
retries) with ``poison`` (isolating texts that cannot be embedded) and ``refusal_backoff`` (the waits
after an actor's refusals), ``spawn`` (create,
find, kill actors), ``scaling`` (grow, shrink); subpackages :mod:`workers.model` (tokenize,
forward, pool, cut, normalize) and :mod:`workers.bench` (the embedder benchmark).  Only
:mod:`workers.model` and :mod:`workers.bench` import torch, and only when a model is loaded or
benchmarked.
"""
