"""MicroBatcher with ``launch_batch``: the next forward pass is queued while the previous one's results
come back, results still land in order, and failures, out-of-memory and close() keep their guarantees."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
from batcher_fakes import repeated_rows, text

from workers.batcher import MicroBatcher
from workers.errors import EmbedderUnavailable, ForwardOutOfMemory
from workers.settings import BatchSettings

POISON = -1  # a text whose pass fails when its results are waited for (as a CUDA error surfaces)
TOO_BIG = 100  # padded tokens above which a launch raises ForwardOutOfMemory


class QueuedDevice:
    """A fake device that queues passes: ``launch`` records the pass and returns its wait; a wait for
    pass ``n`` blocks until pass ``n + 1`` was launched (``hold`` s at most), so a batcher that queues
    the next pass while waiting is seen doing so (``overlapped``) and one that does not only waits."""

    def __init__(self, hold: float = 0.5) -> None:
        self.hold = hold
        self.launched: list[list[int]] = []  # the uids of every launched pass, failed ones included
        self.run_calls: list[list[int]] = []  # passes through run_batch (splits, or depth 1)
        self.overlapped: list[bool] = []  # per waited pass: was the next one launched meanwhile
        self.release = threading.Event()  # set: waits return without holding
        self._launches: list[threading.Event] = []
        self._lock = threading.Lock()

    def launch(
        self, ids: list[Sequence[int]], dims: tuple[int, ...], adapter: str | None = None
    ) -> Callable[[], Mapping[int, np.ndarray]]:
        cost = max(len(seq) for seq in ids) * len(ids)
        if len(ids) > 1 and cost > TOO_BIG:
            raise ForwardOutOfMemory(f"out of memory over {len(ids)} inputs ({cost} tokens)", cost)
        uids = [seq[0] for seq in ids]
        with self._lock:
            number = len(self.launched)
            self.launched.append(uids)
            self._launches.append(threading.Event())
            if number:
                self._launches[number - 1].set()

        def wait() -> Mapping[int, np.ndarray]:
            if not self.release.is_set():
                self.overlapped.append(self._launches[number].wait(self.hold))
            if POISON in uids:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return repeated_rows(uids, dims)

        return wait

    def release_all(self) -> None:
        """Let every wait return now, those already waiting too."""
        self.release.set()
        with self._lock:
            for launched in self._launches:
                launched.set()

    def run(
        self, ids: list[Sequence[int]], dims: tuple[int, ...], adapter: str | None = None
    ) -> Mapping[int, np.ndarray]:
        self.run_calls.append([seq[0] for seq in ids])
        if POISON in self.run_calls[-1]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return repeated_rows(self.run_calls[-1], dims)


def make(
    device: QueuedDevice, batchers: list[MicroBatcher], in_flight: int = 2, **kwargs: object
) -> MicroBatcher:
    settings = BatchSettings(
        max_batch_tokens=64, max_wait_ms=1, max_queued_tokens=100_000, batches_in_flight=in_flight
    )
    batcher = MicroBatcher(device.run, settings, launch_batch=device.launch, **kwargs)  # type: ignore[arg-type]
    batchers.append(batcher)
    return batcher


async def test_the_next_pass_is_queued_while_the_previous_results_come_back(
    batchers: list[MicroBatcher],
) -> None:
    device = QueuedDevice()
    batcher = make(device, batchers)
    uids = list(range(1, 17))
    out = await batcher.submit([text(uid, 32) for uid in uids], (8, 4))  # 8 passes of 2 texts
    for dim in (8, 4):
        assert out[dim][:, 0].tolist() == uids and out[dim].shape == (16, dim)
    assert sorted(uid for batch in device.launched for uid in batch) == uids
    assert len(device.launched) == 8 and not device.run_calls
    # Every pass but the last had the next one queued before its results were read.
    assert device.overlapped == [True] * 7 + [False]
    stats = batcher.stats()
    assert stats.batches == 8 and stats.texts == 16 and stats.failed_batches == 0


async def test_one_batch_in_flight_runs_each_pass_to_its_end_first(batchers: list[MicroBatcher]) -> None:
    device = QueuedDevice()
    batcher = make(device, batchers, in_flight=1)
    out = await batcher.submit([text(uid, 32) for uid in range(1, 9)], (4,))
    assert out[4][:, 0].tolist() == list(range(1, 9))
    assert not device.launched and len(device.run_calls) == 4


async def test_a_pass_failing_when_waited_for_is_split_and_the_others_land(
    batchers: list[MicroBatcher],
) -> None:
    device = QueuedDevice()
    device.release.set()
    failures: list[tuple[str, bool, int]] = []
    batcher = make(device, batchers, on_failure=lambda *f: failures.append(f))
    good = asyncio.ensure_future(batcher.submit([text(uid, 32) for uid in range(1, 9)], (4,)))
    await asyncio.sleep(0)
    bad = asyncio.ensure_future(batcher.submit([text(20, 32), text(POISON, 32)], (4,)))
    assert (await good)[4][:, 0].tolist() == list(range(1, 9))
    with pytest.raises(Exception, match="illegal memory access") as caught:
        await bad
    assert caught.value.__class__.__name__ == "FailedInputs"
    # The failed pair ran again as halves through run_batch: text 20 got its vector, POISON failed alone.
    assert device.run_calls == [[20], [POISON]]
    assert [cause for cause, _, _ in failures] == ["error", "error"]
    assert batcher.stats().failed_texts == 1


async def test_an_out_of_memory_at_launch_lowers_the_budget_and_every_text_lands(
    batchers: list[MicroBatcher],
) -> None:
    device = QueuedDevice()
    device.release.set()
    settings = BatchSettings(
        max_batch_tokens=200, max_wait_ms=1, max_queued_tokens=100_000, batches_in_flight=2
    )
    batcher = MicroBatcher(device.run, settings, launch_batch=device.launch)
    batchers.append(batcher)
    out = await batcher.submit([text(uid, 40) for uid in range(1, 6)], (4,))  # 5 x 40 > TOO_BIG
    assert out[4][:, 0].tolist() == list(range(1, 6))
    assert batcher.stats().oom_splits >= 1 and batcher.stats().batch_budget < 200


async def test_close_fails_the_requests_of_passes_in_flight(batchers: list[MicroBatcher]) -> None:
    device = QueuedDevice(hold=30)  # the last pass waits for a launch that never comes
    batcher = make(device, batchers)
    request = asyncio.ensure_future(batcher.submit([text(uid, 32) for uid in range(1, 5)], (4,)))
    for _ in range(200):
        if len(device.launched) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(device.launched) == 2 and not request.done()
    await batcher.close()
    with pytest.raises(EmbedderUnavailable):
        await request
    device.release_all()


@pytest.mark.parametrize("seed", range(3))
async def test_random_requests_through_passes_in_flight_all_land_in_order(
    batchers: list[MicroBatcher], seed: int
) -> None:
    device = QueuedDevice(hold=0.05)
    batcher = make(device, batchers, in_flight=int(np.random.default_rng(seed).integers(2, 5)))
    rng = np.random.default_rng(seed)
    requests = [
        [text(1000 * r + i, int(rng.integers(1, 64))) for i in range(int(rng.integers(1, 9)))]
        for r in range(30)
    ]
    results = await asyncio.gather(*(batcher.submit(ids, (4,)) for ids in requests))
    for ids, out in zip(requests, results, strict=True):
        assert out[4][:, 0].tolist() == [seq[0] for seq in ids]
    assert sorted(uid for batch in device.launched for uid in batch) == sorted(
        seq[0] for ids in requests for seq in ids
    )
