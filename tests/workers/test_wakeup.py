import asyncio
import contextlib

from workers.wakeup import Wakeup


def test_notify_wakes_every_waiter_and_only_those_waiting() -> None:
    async def scenario() -> None:
        wakeup = Wakeup()
        wakeup.notify()  # no waiter: nothing to wake, nothing kept for later
        waiters = [asyncio.create_task(wakeup.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        wakeup.notify()
        await asyncio.wait_for(asyncio.gather(*waiters), 1)
        late = asyncio.create_task(wakeup.wait())
        await asyncio.sleep(0.01)
        assert not late.done()  # a notify before it started does not count for it
        wakeup.notify()
        await asyncio.wait_for(late, 1)

    asyncio.run(scenario())


def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    async def scenario() -> None:
        wakeup = Wakeup()
        cancelled, kept = asyncio.create_task(wakeup.wait()), asyncio.create_task(wakeup.wait())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert cancelled.cancelled() and not kept.done()
        wakeup.notify()
        await asyncio.wait_for(kept, 1)

    asyncio.run(scenario())


def test_a_wakeup_outlives_the_event_loop_of_its_waiters() -> None:
    wakeup = Wakeup()

    async def abandoned_waiter() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), 0.02)  # leaves its future behind, of this loop

    async def later_waiter() -> None:
        waiter = asyncio.create_task(wakeup.wait())
        await asyncio.sleep(0)
        wakeup.notify()
        await asyncio.wait_for(waiter, 1)

    asyncio.run(abandoned_waiter())
    asyncio.run(later_waiter())  # waits on a future of its own loop, not the one left behind


def test_notify_after_the_waiters_loop_closed_is_harmless() -> None:
    wakeup = Wakeup()
    loop = asyncio.new_event_loop()
    waiter = loop.create_task(wakeup.wait())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()  # the waiter never ended: its wake-up future still has a callback on that loop
    wakeup.notify()
    assert not waiter.done()
