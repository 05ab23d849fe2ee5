"""MicroBatcher when forward passes fail: out-of-memory (injected) splits and lowers the budget, a
text failing alone is named, other texts land, a broken model is not blamed on a text."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from batcher_fakes import repeated_rows, text

from workers.batch_budget import GROW_AFTER, GROW_STEP, BatchBudget
from workers.batcher import MicroBatcher
from workers.errors import EmbedderUnavailable, FailedInputs, ForwardOutOfMemory
from workers.settings import BatchSettings

BROKEN = -2  # a text the model raises a plain error on, whatever it travels with


class MemoryBoundForward:
    """A forward pass on a device holding ``memory`` padded tokens: a bigger batch raises
    ForwardOutOfMemory (as the model does after a CUDA OOM).  Row ``r`` is ``ids[r][0]`` repeated."""

    def __init__(self, memory: int) -> None:
        self.memory = memory
        self.calls: list[tuple[int, int]] = []  # (texts, padded tokens) of every pass, failed ones too
        self.embedded: list[int] = []  # first token of every text a successful pass embedded

    def __call__(
        self, ids: list[Sequence[int]], dims: tuple[int, ...], adapter: str | None = None
    ) -> Mapping[int, np.ndarray]:
        cost = max(len(seq) for seq in ids) * len(ids)
        self.calls.append((len(ids), cost))
        if cost > self.memory:
            raise ForwardOutOfMemory(
                f"out of memory in a forward pass over {len(ids)} inputs ({cost} tokens)", cost
            )
        if any(seq[0] == BROKEN for seq in ids):
            raise RuntimeError("index out of range in self")
        self.embedded.extend(seq[0] for seq in ids)
        return repeated_rows([seq[0] for seq in ids], dims)


def settings(budget: int) -> BatchSettings:
    return BatchSettings(max_batch_tokens=budget, max_wait_ms=5.0, max_queued_tokens=100_000, sort_window=64)


async def test_an_oversized_batch_is_split_until_it_fits_and_every_text_gets_its_vector(
    batchers: list[MicroBatcher],
) -> None:
    forward = MemoryBoundForward(memory=100)
    failures: list[tuple[str, bool, int]] = []
    batcher = MicroBatcher(forward, settings(400), on_failure=lambda *f: failures.append(f))
    batchers.append(batcher)
    out = await batcher.submit([text(uid, 40) for uid in range(1, 9)], (4,))  # 8 x 40 = 320 padded
    assert out[4][:, 0].tolist() == list(range(1, 9))
    # 320 fails (budget -> 160), a half of 160 fails (budget -> 80), then only batches of 80 run:
    # the other half of 160 is halved before it runs, since it is over the lowered budget.
    assert forward.calls == [(8, 320), (4, 160), (2, 80), (2, 80), (2, 80), (2, 80)]
    assert failures == [("oom", False, 160), ("oom", False, 80)]
    stats = batcher.stats()
    assert (stats.oom_splits, stats.error_splits, stats.failed_texts) == (2, 0, 0)
    assert (stats.batches, stats.failed_batches, stats.batch_budget) == (4, 2, 80)
    # The next request is cut to the lowered budget at once: no forward pass runs out of memory.
    forward.calls.clear()
    out = await batcher.submit([text(uid, 40) for uid in range(9, 13)], (4,))
    assert out[4][:, 0].tolist() == [9, 10, 11, 12]
    assert forward.calls == [(2, 80), (2, 80)]


async def test_a_text_that_runs_out_of_memory_alone_is_named_and_every_other_text_lands(
    batchers: list[MicroBatcher],
) -> None:
    forward = MemoryBoundForward(memory=100)
    batcher = MicroBatcher(forward, settings(400), probe=lambda: forward([[7]], (4,)))
    batchers.append(batcher)
    huge = [text(1, 30), text(2, 120), text(3, 30)]  # the second does not fit even alone
    other = [text(4, 30), text(5, 30)]
    outcomes = await asyncio.gather(
        batcher.submit(huge, (4,)), batcher.submit(other, (4,)), return_exceptions=True
    )
    failed, landed = outcomes
    assert isinstance(failed, FailedInputs) and not failed.retriable
    assert list(failed.failures) == [1]
    assert failed.failures[1].startswith("out of memory in a forward pass over 1 inputs (120 tokens)")
    assert isinstance(landed, dict) and landed[4][:, 0].tolist() == [4, 5]
    # The request's other texts ran (the pool asks again without the failing one).
    assert sorted(forward.embedded) == [1, 3, 4, 5, 7]  # 7: the probe, run once the text failed alone
    # [30 x 4] ran out of memory (budget 400 -> 60); the text alone lowers nothing: one text says
    # nothing about how many fit together.
    assert (batcher.stats().failed_texts, batcher.stats().batch_budget) == (1, 60)


async def test_other_errors_of_the_model_isolate_the_text_without_lowering_the_budget(
    batchers: list[MicroBatcher],
) -> None:
    forward = MemoryBoundForward(memory=10_000)
    batcher = MicroBatcher(forward, settings(400))
    batchers.append(batcher)
    with pytest.raises(FailedInputs) as caught:
        await batcher.submit([text(1, 10), text(2, 10), text(BROKEN, 10), text(3, 10)], (4,))
    assert caught.value.failures == {2: "RuntimeError: index out of range in self"}
    stats = batcher.stats()
    assert stats.error_splits >= 1 and stats.oom_splits == 0 and stats.batch_budget == 400
    assert stats.texts == 3  # the three good texts ran in passes that succeeded


async def test_a_failure_crosses_process_boundaries_as_itself() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(FailedInputs({3: "out of memory"})))
    assert isinstance(error, FailedInputs) and error.failures == {3: "out of memory"}
    oom = pickle.loads(pickle.dumps(ForwardOutOfMemory("out of memory over 2 inputs", 96)))
    assert (str(oom), oom.cost, oom.retriable) == ("out of memory over 2 inputs", 96, True)


async def test_when_the_probe_fails_too_the_model_is_broken_and_no_text_is_blamed(
    batchers: list[MicroBatcher],
) -> None:
    def always_fails(ids: list[Sequence[int]], dims: tuple[int, ...]) -> Mapping[int, np.ndarray]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    broken: list[BaseException] = []
    batcher = MicroBatcher(
        always_fails, settings(400), probe=lambda: always_fails([[1]], (4,)), on_broken=broken.append
    )
    batchers.append(batcher)
    with pytest.raises(EmbedderUnavailable, match="the model is broken"):
        await batcher.submit([text(1, 10), text(2, 10)], (4,))
    assert len(broken) == 1 and "illegal memory access" in str(broken[0])
    assert batcher.stats().failed_texts == 0
    with pytest.raises(EmbedderUnavailable):
        await batcher.submit([text(3, 10)], (4,))


def test_the_budget_halves_the_failed_cost_and_grows_back_slowly_to_the_configured_one() -> None:
    budget = BatchBudget(1024)
    budget.out_of_memory(1000)
    assert budget.current == 500
    budget.out_of_memory(1200)  # a single text over the budget: half its cost is no lower, kept
    assert budget.current == 500
    budget.out_of_memory(900)
    assert budget.current == 450
    step = int(1024 * GROW_STEP)
    for _ in range(GROW_AFTER - 1):
        budget.succeeded()
    assert budget.current == 450
    budget.succeeded()
    assert budget.current == 450 + step
    for _ in range(GROW_AFTER * 100):
        budget.succeeded()
    assert budget.current == 1024
