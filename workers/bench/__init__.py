"""``python -m pipeline bench``: the embedder's throughput against sentence-transformers and a
plain padded transformers forward, on the same weights (random Qwen3 shapes or a model folder).

``embedder_bench`` parses and runs, ``setup`` builds models and token-id workloads, ``strategies``
are the timed contenders.  May import anything in :mod:`workers`; never :mod:`pipeline`.
"""
