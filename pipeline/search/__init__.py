"""The read side: searching the replicas directly or by funnel, routing, and the HTTP API.

``replicas`` embeds queries on the pool and looks them up, ``routing`` picks a strategy from a
measured profile, ``api`` is the OpenAI-compatible aiohttp application.  May import
:mod:`pipeline.settings`, :mod:`pipeline.documents`, :mod:`pipeline.milvus` and the model's
description from :mod:`workers`; assembling a server is :mod:`pipeline.runtime.serving`.
"""
