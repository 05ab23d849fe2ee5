"""The model behind the narrow interface the actors use: tokenize on CPU, forward on the device,
pool, cut and normalize.

``embedding_model`` loads any Hugging Face embedder (AutoModel + its tokenizer), ``tokenizer``
counts and encodes texts, ``packing`` runs unpadded forward passes, ``pooling`` turns token states
into one vector, ``matryoshka`` cuts and normalizes and holds the one rule for valid dims.  Imports
only :mod:`workers.errors` and :mod:`workers.settings` from the project; torch and transformers are
imported when a model loads, so the driver can import the model's description cheaply.
"""
