"""A deliberately unreliable OpenAI-compatible ``/v1/embeddings`` server in the test process.

Each text gets a fixed vector (seeded by the text's hash, NOT unit length, so a client that trusts
the server's normalization or cut is caught); each request is answered by the fault that
``faults(n)`` names for the n-th request (``OK`` or one of :data:`FAULTS`).  Every request body is
kept in :attr:`FakeEmbeddings.bodies`, every fault served is counted in :attr:`FakeEmbeddings.served`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from aiohttp import web

from pipeline.ops.processes import HOST, free_port
from workers.model.matryoshka import cut_and_normalize_array

OK = "ok"
FAULTS = (
    "slow",  # answers only after slow_s (past the client's timeout)
    "throttle",  # 429 with Retry-After
    "error500",
    "error503",  # 503 with Retry-After
    "drop",  # closes the connection without an answer
    "short",  # one vector fewer than texts
    "duplicate_index",
    "wide",  # vectors one component wider than the model's
    "not_json",
    "nan",
    "reversed",  # a valid answer whose items come in reverse order (the index says which is which)
)
RETRY_AFTER_S = 0.2


def vector_of(text: str, width: int) -> np.ndarray:
    """The fixed full vector of ``text``: seeded normal components times a text-dependent scale."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(width) * (1.0 + seed % 7)).astype(np.float32)


def expected_vectors(texts: Sequence[str], width: int, dims: tuple[int, ...]) -> dict[int, np.ndarray]:
    """What a correct client makes of the server's answers: the project's cut-then-normalize."""
    return cut_and_normalize_array(np.stack([vector_of(t, width) for t in texts]), dims)


class FakeEmbeddings:
    """The server; ``async with FakeEmbeddings(...) as server`` serves at :attr:`base_url`."""

    def __init__(
        self,
        width: int = 64,
        faults: Callable[[int], str] = lambda n: OK,
        *,
        slow_s: float = 3.0,
        api_key: str | None = None,
        model: str | None = None,
        refuse: Callable[[str], bool] = lambda text: False,
    ) -> None:
        self.width = width
        self.faults = faults
        self.slow_s = slow_s
        self.api_key = api_key
        self.model = model
        self.refuse = refuse
        """Texts answered with a 400 (whole request) while any of them is in it."""
        self.bodies: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        """``time.monotonic()`` at each request's arrival."""
        self.served: Counter[str] = Counter()
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeEmbeddings:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        self.bodies.append(body)
        self.arrivals.append(time.monotonic())
        if self.model is not None and body.get("model") != self.model:
            return web.json_response({"error": {"message": "no such model"}}, status=404)
        texts: list[str] = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if any(self.refuse(t) for t in texts):
            self.served["refused"] += 1
            return web.json_response({"error": {"message": "input refused"}}, status=400)
        fault = self.faults(len(self.bodies) - 1)
        self.served[fault] += 1
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        elif fault == "throttle":
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers=retry)
        elif fault == "error500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        elif fault == "error503":
            return web.json_response({"error": {"message": "overloaded"}}, status=503, headers=retry)
        elif fault == "drop":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp drops the request quietly: the client sees EOF
        elif fault == "not_json":
            return web.Response(text="<html>gateway</html>", content_type="text/html")
        data = [
            {"object": "embedding", "index": i, "embedding": [float(x) for x in vector_of(t, self.width)]}
            for i, t in enumerate(texts)
        ]
        if fault == "short":
            data = data[:-1]
        elif fault == "duplicate_index" and len(data) > 1:
            data[-1]["index"] = 0
        elif fault == "duplicate_index":
            data[0]["index"] = 1
        elif fault == "wide":
            for item in data:
                item["embedding"].append(0.5)
        elif fault == "nan":
            data[0]["embedding"][0] = float("nan")
        elif fault == "reversed":
            data.reverse()
        answer = {"object": "list", "data": data, "model": body.get("model"), "usage": {}}
        return web.Response(text=json.dumps(answer), content_type="application/json")
