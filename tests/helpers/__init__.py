"""Helpers shared by the tests, imported as ``from helpers.<module> import ...`` (tests/ is on sys.path).

- :mod:`helpers.settings`: settings on a topic, dead-letter topic, consumer group, collection prefix
  (and, when asked, Ray namespace) of the test's own (``private_settings``, ``private_kafka``).
- :mod:`helpers.kafka_io`: the ``Record`` type (key and value as produced), ``produce`` (send in order,
  await every acknowledgement, return each record's partition and offset), ``read_topic`` (a topic
  back to its end), ``committed_and_end`` and ``assert_all_committed`` (a group's committed offsets
  against the log end), ``CommitWatcher`` (the group's committed total, polled while a worker runs).
- :mod:`helpers.oracle`: the word lists and seeded sentences of test streams, ``StreamOracle`` (the
  expected final state, fed the events as they are produced), ``read_replicas``, ``compare`` and its
  ``Verdict``, ``assert_exact`` (every replica and the dead-letter topic against the oracle).
- :mod:`helpers.fakes`: stand-ins for the consumer's collaborators (a whitespace tokenizer, an
  embedder of constant unit vectors, a sink that takes every write, a Kafka record).
- :mod:`helpers.models`: builders of small offline models (a tiny random Qwen3 with its tokenizer, a
  sentence-transformers layout around a model folder) and the sample texts the model tests embed.
- :mod:`helpers.app_server`: ``serving`` (an aiohttp app or runner on a free local port, yielding its URL).
- :mod:`helpers.services`: services the local stack does not run (a real Milvus 2.3.5 standalone) and
  ``RayCluster``, what the session's Ray head fixture yields.

Helpers of one folder only stay there: tests/faults (the mixed stream, the worker process, a TCP proxy,
a crashing actor) and tests/integration (the end-to-end corpus, the metrics scraper, the multinode driver).
"""
