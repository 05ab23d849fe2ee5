"""AdmissionLimit's rule, and Slots.pick holding ingestion calls back by it (no Ray: fake handles)."""

from __future__ import annotations

import asyncio
import math

import pytest

from workers.admission import AdmissionLimit
from workers.slots import Slot, Slots


def test_unlimited_until_the_first_refusal_and_answers_alone_change_nothing() -> None:
    limit = AdmissionLimit()
    for in_flight in range(0, 500, 7):
        limit.answered(in_flight)
        assert limit.admits(in_flight) and math.isinf(limit.limit)


def test_a_refusal_halves_what_is_still_in_flight_never_below_one() -> None:
    limit = AdmissionLimit()
    limit.refused(sent_epoch=0, in_flight=40)
    assert limit.limit == 20 and limit.epoch == 1
    assert limit.admits(19) and not limit.admits(20)
    alone = AdmissionLimit()
    alone.refused(sent_epoch=0, in_flight=0)  # other callers fill the actor: one call still goes
    assert alone.limit == 1 and alone.admits(0) and not alone.admits(1)


def test_one_burst_of_refusals_decreases_once() -> None:
    limit = AdmissionLimit()
    for in_flight in range(60, 0, -1):  # a whole burst, all sent before the first answer came back
        limit.refused(sent_epoch=0, in_flight=in_flight)
    assert limit.limit == 30 and limit.epoch == 1 and limit.refusals == 60
    limit.refused(sent_epoch=1, in_flight=50)  # a call sent under the new limit: decreases again
    assert limit.limit == 15 and limit.epoch == 2


def test_answers_raise_the_limit_by_about_one_a_round_trip_only_while_it_binds() -> None:
    limit = AdmissionLimit()
    limit.refused(sent_epoch=0, in_flight=8)
    assert limit.limit == 4
    limit.answered(in_flight=0)  # one call out of a limit of 4: the limit was not what held calls back
    assert limit.limit == 4
    for _ in range(4):  # a round trip of calls with the limit full
        limit.answered(in_flight=3)
    assert 4.9 < limit.limit < 5.0  # 4 + 1/4 + ~1/4.25 + ... : about one more
    for _ in range(200):
        limit.answered(in_flight=math.ceil(limit.limit) - 1)
    assert 20 < limit.limit < 21  # additive: ~sqrt(2 * 200) more after 200 answers, not 200


def test_decrease_must_lie_between_zero_and_one() -> None:
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="decrease"):
            AdmissionLimit(bad)


async def test_pick_holds_ingestion_back_until_a_call_ends_but_never_other_calls() -> None:
    slots = Slots([Slot(0, handle=None), Slot(1, handle=None)], ready_timeout_s=1.0)
    for slot in slots.items:
        slot.admission.refused(sent_epoch=0, in_flight=2)  # limit 1
        slot.ingesting = 1
    assert (await asyncio.wait_for(slots.pick(), 1.0)) in slots.items  # a query: not limited
    waiting = asyncio.create_task(slots.pick(ingestion=True))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    slots.wake_pickers()  # a call ended but nothing was freed: still waits
    await asyncio.sleep(0.05)
    assert not waiting.done()
    slots.items[1].ingesting = 0
    slots.wake_pickers()
    assert (await asyncio.wait_for(waiting, 1.0)) is slots.items[1]


async def test_a_cancelled_picker_does_not_cancel_the_others_wake_up() -> None:
    slots = Slots([Slot(0, handle=None)], ready_timeout_s=1.0)
    slots.items[0].admission.refused(sent_epoch=0, in_flight=2)
    slots.items[0].ingesting = 1
    first = asyncio.create_task(slots.pick(ingestion=True))
    second = asyncio.create_task(slots.pick(ingestion=True))
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.sleep(0.05)
    slots.items[0].ingesting = 0
    slots.wake_pickers()
    assert (await asyncio.wait_for(second, 1.0)) is slots.items[0]


def test_pickers_of_a_finished_event_loop_leave_nothing_behind() -> None:
    slots = Slots([Slot(0, handle=None)], ready_timeout_s=1.0)
    slots.items[0].admission.refused(sent_epoch=0, in_flight=2)
    slots.items[0].ingesting = 1

    async def abandoned_picker() -> None:
        waiting = asyncio.create_task(slots.pick(ingestion=True))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # still waiting when this loop ends (asyncio.run cancels it)

    asyncio.run(abandoned_picker())  # nothing woke it: its loop's future is left behind

    async def picker_of_a_new_loop() -> Slot:
        waiting = asyncio.create_task(slots.pick(ingestion=True))
        await asyncio.sleep(0.05)
        slots.items[0].ingesting = 0
        slots.wake_pickers()
        return await asyncio.wait_for(waiting, 1.0)

    assert asyncio.run(picker_of_a_new_loop()) is slots.items[0]
