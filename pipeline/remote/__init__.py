"""The remote embedder backend (``embedder.backend = "openai"``): an OpenAI-compatible ``/v1/embeddings``
endpoint instead of the in-actor model, behind the interface pipeline/ uses of the actors' pool.

``client`` sends one request and types its failures; ``requests`` cuts texts into requests by tokens;
``embedder`` holds the retries, backpressure, Matryoshka cut and refused-text isolation; ``startup``
checks the settings and the endpoint.  Nothing here imports torch or Ray.
"""
