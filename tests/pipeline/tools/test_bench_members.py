"""`bench --end-to-end --actors N --consumer-actors M`: the run's sizes and the group's busy time."""

from __future__ import annotations

import pytest

from pipeline.ingest.consumer_stats import ConsumerStats
from pipeline.runtime.run_summary import GroupStats
from pipeline.settings import KafkaSettings, ScalingSettings, Settings
from pipeline.tools.bench_members import group_seconds, sized_settings
from pipeline.tools.bench_pipeline import _parser
from workers.settings import PoolSettings


def test_actors_consumers_and_partitions_come_from_the_command_line() -> None:
    args = _parser().parse_args(["--end-to-end", "--actors", "8", "--consumer-actors", "8"])
    settings = sized_settings(Settings(), args.actors, args.consumer_actors, args.partitions)
    assert settings.pool.num_actors == 8 and settings.scaling.consumer_actors == 8
    assert settings.kafka.partitions == 8  # raised from the default 4: one partition per member at least
    assert sized_settings(Settings(), 8, 2, 16).kafka.partitions == 16


def test_unset_options_keep_the_configured_sizes() -> None:
    configured = Settings(
        pool=PoolSettings(num_actors=3),
        scaling=ScalingSettings(consumer_actors=2),
        kafka=KafkaSettings(partitions=6),
    )
    settings = sized_settings(configured, None, None, None)
    sizes = (settings.pool.num_actors, settings.scaling.consumer_actors, settings.kafka.partitions)
    assert sizes == (3, 2, 6)
    assert sized_settings(Settings(), None, None, None).scaling.consumer_actors == 0


def _member(first: float | None, last: float | None) -> ConsumerStats:
    return ConsumerStats(events=1, first_record_at=first, last_ack_at=last)


def test_the_group_is_busy_from_the_first_record_polled_to_the_last_unit_acknowledged() -> None:
    group = GroupStats((_member(10.0, 14.0), _member(11.0, 17.5), _member(None, None)))
    assert group_seconds(group, one_host=True) == pytest.approx(7.5)
    # Members on other nodes share no clock: only the busiest member's own span is a measurement.
    assert group_seconds(group, one_host=False) == pytest.approx(6.5)
    assert group_seconds(GroupStats((_member(None, None),)), one_host=True) == 0.0
