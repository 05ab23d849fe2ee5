"""Helpers shared by the tests, imported as ``from helpers.<module> import ...`` (tests/ is on sys.path).

- :mod:`helpers.models`: builders of small offline models (a tiny random Qwen3 with its tokenizer, a
  sentence-transformers layout around a model folder) and the sample texts the model tests embed.
- :mod:`helpers.services`: services the local stack does not run (a real Milvus 2.3.5 standalone) and
  :class:`~helpers.services.RayCluster`, what the session's Ray head fixture yields.
"""
