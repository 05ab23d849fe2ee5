"""MicroBatcher against a recording fake forward pass: ordering, budgets, timing, bounds, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from batcher_fakes import repeated_rows, text

from workers.batcher import MicroBatcher
from workers.errors import Backpressure, EmbedderUnavailable, FailedInputs, PipelineError
from workers.settings import BatchSettings

POISON = -1


class FakeForward:
    """Records every batch; row ``r`` of dim ``d`` is ``ids[r][0]`` repeated, so callers can check order.

    ``gate`` (when given) blocks every forward pass until set; a batch holding ``POISON`` raises.
    """

    def __init__(self, *, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[tuple[list[list[int]], tuple[int, ...]]] = []
        self.delay = delay
        self.gate = gate
        self.active = 0
        self.max_active = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(
        self, ids: list[Sequence[int]], dims: tuple[int, ...], adapter: str | None = None
    ) -> Mapping[int, np.ndarray]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.started.set()
            if self.gate is not None:
                self.gate.wait(10)
            time.sleep(self.delay)
            self.batches.append(([list(seq) for seq in ids], dims))
            if any(POISON in seq for seq in ids):
                raise ValueError("poisoned batch")
            return repeated_rows([seq[0] for seq in ids], dims)
        finally:
            with self._lock:
                self.active -= 1

    def padded(self) -> list[int]:
        return [max(len(seq) for seq in ids) * len(ids) for ids, _ in self.batches]

    def processed(self) -> list[int]:
        """The first token of every text, in the order the forward passes saw them."""
        return [seq[0] for ids, _ in self.batches for seq in ids]


def settings(**overrides: float) -> BatchSettings:
    values: dict[str, float] = {"max_batch_tokens": 256, "max_wait_ms": 5.0, "max_queued_tokens": 4096}
    values.update(overrides)
    return BatchSettings.model_validate(values)


def make(forward: FakeForward, batchers: list[MicroBatcher], **overrides: float) -> MicroBatcher:
    batcher = MicroBatcher(forward, settings(**overrides))
    batchers.append(batcher)
    return batcher


async def test_results_come_back_in_input_order_for_every_dim(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers, max_batch_tokens=64, sort_window=16)
    lengths = [30, 3, 17, 1, 64, 9, 22, 5]
    out = await batcher.submit([text(uid, n) for uid, n in enumerate(lengths, 1)], (8, 4))
    assert set(out) == {8, 4}
    for dim, rows in out.items():
        assert rows.shape == (len(lengths), dim) and rows.dtype == np.float32
        assert rows[:, 0].tolist() == list(range(1, len(lengths) + 1))
    assert len(forward.batches) > 1  # the order survived sorting and splitting


async def test_every_batch_stays_within_the_token_budget(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    budget = 200
    batcher = make(forward, batchers, max_batch_tokens=budget, sort_window=8, max_queued_tokens=100_000)
    rng = np.random.default_rng(7)
    requests = [
        [text(1000 * r + i, int(rng.integers(1, 90))) for i in range(int(rng.integers(1, 12)))]
        for r in range(40)
    ]
    results = await asyncio.gather(*(batcher.submit(ids, (4,)) for ids in requests))
    for ids, out in zip(requests, results, strict=True):
        assert out[4][:, 0].tolist() == [seq[0] for seq in ids]
    assert all(padded <= budget for padded in forward.padded())
    assert sorted(forward.processed()) == sorted(seq[0] for ids in requests for seq in ids)


async def test_concurrent_submits_share_forward_passes(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers, max_batch_tokens=1024, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.submit([text(uid, 10)], (4,)) for uid in range(1, 31)))
    assert [out[4][0, 0] for out in results] == list(range(1, 31))
    assert len(forward.batches) == 1
    assert batcher.stats().texts == 30


async def test_a_batch_waits_at_most_max_wait_for_company(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers, max_batch_tokens=1024, max_wait_ms=300)
    started = time.monotonic()
    first = asyncio.create_task(batcher.submit([text(1, 10)], (4,)))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.submit([text(2, 10)], (4,)))
    await asyncio.gather(first, second)
    elapsed = time.monotonic() - started
    assert len(forward.batches) == 1  # the second text joined the first one's batch
    assert 0.29 <= elapsed < 0.6  # the deadline counts from the first text, not the last


async def test_a_full_budget_does_not_wait(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers, max_batch_tokens=100, max_wait_ms=10_000)
    started = time.monotonic()
    await batcher.submit([text(uid, 25) for uid in range(1, 5)], (4,))
    assert time.monotonic() - started < 1.0
    assert forward.padded() == [100]


async def test_over_long_text_runs_alone(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers, max_batch_tokens=64, sort_window=8)
    out = await batcher.submit([text(1, 5), text(2, 500), text(3, 5)], (4,))
    assert out[4][:, 0].tolist() == [1, 2, 3]
    long_batches = [ids for ids, _ in forward.batches if any(len(seq) == 500 for seq in ids)]
    assert long_batches == [[text(2, 500)]]


async def test_sort_window_cuts_padding_against_arrival_order(batchers: list[MicroBatcher]) -> None:
    lengths = [4, 60] * 32
    efficiency = {}
    for window in (1, 64):
        forward = FakeForward()
        batcher = make(forward, batchers, max_batch_tokens=256, sort_window=window)
        out = await batcher.submit([text(uid, n) for uid, n in enumerate(lengths, 1)], (4,))
        assert out[4][:, 0].tolist() == list(range(1, len(lengths) + 1))
        efficiency[window] = batcher.stats().padding_efficiency
    assert efficiency[1] < 0.55
    assert efficiency[64] > 0.9


async def test_windows_run_in_arrival_order(batchers: list[MicroBatcher]) -> None:
    """Sorting stays inside a window: no text runs before every text of an earlier window has run."""
    forward = FakeForward()
    window = 5
    batcher = make(forward, batchers, max_batch_tokens=120, sort_window=window)
    rng = np.random.default_rng(3)
    lengths = [int(n) for n in rng.integers(1, 60, size=40)]
    await batcher.submit([text(uid, n) for uid, n in enumerate(lengths)], (4,))
    windows = [uid // window for uid in forward.processed()]
    assert windows == sorted(windows)


async def test_backpressure_refuses_at_once_over_the_queue_bound(batchers: list[MicroBatcher]) -> None:
    gate = threading.Event()
    forward = FakeForward(gate=gate)
    batcher = make(forward, batchers, max_batch_tokens=100, max_queued_tokens=300, max_wait_ms=0)
    running = asyncio.create_task(batcher.submit([text(1, 100)], (4,)))
    await asyncio.to_thread(forward.started.wait, 5)  # the first batch is on the thread, the queue empty
    queued = asyncio.create_task(batcher.submit([text(2, 100), text(3, 150)], (4,)))
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(Backpressure) as refused:
        await batcher.submit([text(4, 51)], (4,))
    assert time.monotonic() - started < 0.1
    assert refused.value.retry_after > 0
    assert batcher.stats().rejected_requests == 1
    assert batcher.stats().queued_tokens == 250
    small = asyncio.create_task(batcher.submit([text(5, 50)], (4,)))  # exactly at the bound: accepted
    gate.set()
    results = await asyncio.gather(running, queued, small)
    assert [out[4][:, 0].tolist() for out in results] == [[1], [2, 3], [5]]


async def test_an_empty_queue_accepts_a_request_larger_than_the_bound(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers, max_batch_tokens=64, max_queued_tokens=100)
    out = await batcher.submit([text(uid, 60) for uid in range(1, 5)], (4,))
    assert out[4][:, 0].tolist() == [1, 2, 3, 4]


async def test_a_text_failing_alone_fails_only_its_caller(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers, max_batch_tokens=64, max_wait_ms=20)
    # 40 + 40 tokens exceed the budget, so the two requests cannot share a batch.
    outcomes: list[object] = await asyncio.gather(
        batcher.submit([text(POISON, 40)], (4,)), batcher.submit([text(2, 40)], (4,)), return_exceptions=True
    )
    bad, good = outcomes
    assert isinstance(bad, FailedInputs) and not bad.retriable
    assert bad.failures == {0: "ValueError: poisoned batch"}
    assert isinstance(good, dict) and good[4][0, 0] == 2
    after = await batcher.submit([text(3, 8)], (4,))
    assert after[4][0, 0] == 3
    stats = batcher.stats()
    assert (stats.failed_batches, stats.batches) == (1, 2)


async def test_forward_runs_off_the_event_loop_one_at_a_time(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward(delay=0.1)
    batcher = make(forward, batchers, max_batch_tokens=64, max_wait_ms=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    await asyncio.gather(*(batcher.submit([text(uid, 60)], (4,)) for uid in range(1, 5)))
    ticking.cancel()
    assert len(forward.batches) == 4
    assert forward.max_active == 1
    assert ticks >= 20  # the loop kept running through 0.4 s of blocking forward passes


async def test_requests_with_different_dims_share_a_batch(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers, max_wait_ms=50)
    wide, narrow = await asyncio.gather(
        batcher.submit([text(1, 5)], (8,)), batcher.submit([text(2, 5)], (2, 4))
    )
    assert forward.batches[0][1] == (8, 4, 2) and len(forward.batches) == 1
    assert set(wide) == {8} and wide[8].shape == (1, 8)
    assert set(narrow) == {2, 4} and narrow[2].shape == (1, 2) and narrow[4][0, 0] == 2


async def test_texts_of_a_cancelled_caller_are_dropped(batchers: list[MicroBatcher]) -> None:
    gate = threading.Event()
    forward = FakeForward(gate=gate)
    batcher = make(forward, batchers, max_batch_tokens=64, max_wait_ms=0)
    running = asyncio.create_task(batcher.submit([text(1, 60)], (4,)))
    await asyncio.to_thread(forward.started.wait, 5)
    abandoned = asyncio.create_task(batcher.submit([text(2, 60), text(3, 60)], (4,)))
    kept = asyncio.create_task(batcher.submit([text(4, 60)], (4,)))
    await asyncio.sleep(0)
    abandoned.cancel()
    gate.set()
    await asyncio.gather(running, kept)
    assert abandoned.cancelled()
    assert forward.processed() == [1, 4]
    assert batcher.stats().queued_tokens == 0


async def test_a_crashed_loop_fails_pending_and_future_submits(
    batchers: list[MicroBatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = make(FakeForward(), batchers)
    bug = RuntimeError("bug in batch forming")

    def broken() -> list[object]:
        raise bug

    monkeypatch.setattr(batcher, "_take_batch", broken)
    with pytest.raises(PipelineError, match="crashed") as pending:
        await asyncio.wait_for(batcher.submit([text(1, 4)], (4,)), 5)
    assert pending.value.__cause__ is bug
    with pytest.raises(PipelineError, match="crashed"):
        await batcher.submit([text(2, 4)], (4,))


async def test_close_fails_waiting_requests_and_refuses_new_ones() -> None:
    gate = threading.Event()
    forward = FakeForward(gate=gate)
    batcher = MicroBatcher(forward, settings(max_batch_tokens=64, max_wait_ms=0))
    running = asyncio.create_task(batcher.submit([text(1, 60)], (4,)))
    await asyncio.to_thread(forward.started.wait, 5)
    waiting = asyncio.create_task(batcher.submit([text(2, 60)], (4,)))
    await asyncio.sleep(0)
    await batcher.close()
    gate.set()
    for task in (running, waiting):
        with pytest.raises(EmbedderUnavailable):
            await task
    with pytest.raises(EmbedderUnavailable):
        await batcher.submit([text(3, 4)], (4,))


async def test_stats_describe_the_work_done(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward(delay=0.01)
    batcher = make(forward, batchers, max_batch_tokens=100, max_wait_ms=0)
    await batcher.submit([text(1, 50), text(2, 50), text(3, 10)], (4,))
    stats = batcher.stats()
    assert (stats.batches, stats.texts, stats.tokens) == (2, 3, 110)
    # Sorted [10, 50, 50]: [10, 50] fills the budget of 100 (padded), [50] runs next.
    assert stats.padded_tokens == sum(forward.padded()) == 150
    assert stats.mean_fill == pytest.approx((1.0 + 0.5) / 2)
    assert stats.padding_efficiency == pytest.approx(110 / 150)
    assert stats.queued_texts == stats.queued_tokens == 0
    assert stats.tokens_per_second > 0 and stats.forward_seconds >= 0.02


async def test_empty_request_returns_empty_arrays_without_a_forward_pass(
    batchers: list[MicroBatcher],
) -> None:
    forward = FakeForward()
    batcher = make(forward, batchers)
    out = await batcher.submit([], (8, 4))
    assert {dim: rows.shape for dim, rows in out.items()} == {8: (0, 8), 4: (0, 4)}
    assert forward.batches == []


async def test_a_packed_batch_is_budgeted_by_its_sum_of_lengths(batchers: list[MicroBatcher]) -> None:
    forward = FakeForward()
    batcher = MicroBatcher(forward, settings(max_batch_tokens=100, sort_window=8), packed=True)
    batchers.append(batcher)
    # Padded, these would cost 5 x 50 = 250 and split in two; packed they cost their 90 real tokens.
    await batcher.submit([text(1, 10), text(2, 50), text(3, 10), text(4, 10), text(5, 10)], (4,))
    assert [len(ids) for ids, _ in forward.batches] == [5]
    stats = batcher.stats()
    assert stats.padded_tokens == stats.tokens == 90 and stats.padding_efficiency == 1.0
