"""embed_isolating on a fake request: texts the model fails on alone are left out and named, the rest
is embedded again without them, and both kinds of poison are found in one request."""

from __future__ import annotations

import numpy as np

from workers.errors import FailedInputs
from workers.poison import KillsActors, embed_isolating


class FakeRequest:
    """Row ``r`` is ``float(texts[r])``; "fail" texts raise FailedInputs (the others ran), a request
    holding "kill" raises KillsActors."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []

    async def __call__(self, texts: list[str], *, alone: bool) -> dict[int, np.ndarray]:
        self.requests.append(list(texts))
        failures = {i: f"out of memory on {t}" for i, t in enumerate(texts) if t.startswith("fail")}
        if failures:
            raise FailedInputs(failures)
        if any(t.startswith("kill") for t in texts):
            raise KillsActors
        return {2: np.array([[float(t), float(t)] for t in texts], dtype=np.float32)}


async def test_failed_inputs_are_named_and_the_rest_is_embedded_again_without_them() -> None:
    request = FakeRequest()
    texts = ["1", "fail-a", "2", "3", "fail-b"]
    vectors, crashed, failed = await embed_isolating(request, texts, (2,), alone=False)
    assert crashed == [] and failed == {1: "out of memory on fail-a", 4: "out of memory on fail-b"}
    assert vectors[2][:, 0].tolist() == [1.0, 0.0, 2.0, 3.0, 0.0]
    assert request.requests[-1] == ["1", "2", "3"]


async def test_texts_that_kill_actors_and_texts_that_fail_are_both_isolated() -> None:
    request = FakeRequest()
    texts = ["1", "kill-a", "fail-a", "2"]
    vectors, crashed, failed = await embed_isolating(request, texts, (2,), alone=False)
    assert crashed == [1] and failed == {2: "out of memory on fail-a"}
    assert vectors[2][:, 0].tolist() == [1.0, 0.0, 0.0, 2.0]
