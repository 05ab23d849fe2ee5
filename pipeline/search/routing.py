"""Which replica answers a search: a policy over a measured recall/latency profile.

Each way to search — one replica directly, or funnel mode (shortlist on a small replica, re-score with
the full-dimension vectors) — is a :class:`Strategy`.  A :class:`Profile` says what each strategy costs
in recall@10 (against exact full-dimension search) and latency; ``python -m pipeline eval-recall``
measures one and writes it as JSON.  :func:`choose` picks a strategy for a request:

* a **recall target** alone: the fastest strategy whose recall reaches it (the most accurate one when
  none does);
* a **latency budget** alone: the most accurate strategy within it (the fastest one when none is);
* both: the fastest strategy meeting both; if none does, the budget wins (it is a deadline), so the
  most accurate strategy within it; if none is within it, the fastest;
* neither: exact-as-possible, the full-dimension replica.

Latencies are updated while serving (:meth:`Profile.observe`, an exponential moving average), so a
profile measured on another box converges to this one's.  Pure: no I/O besides :meth:`Profile.load`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

_SMOOTHING = 0.2
# The default profile's funnel factor and its assumed recall: what eval-recall measured for the smallest
# replica (64 of MiniLM's 384 dims) on Debian's manual pages (tests/perf/results/recall/: 0.962); a
# measured profile replaces both.
DEFAULT_FUNNEL_FACTOR = 50
_DEFAULT_FUNNEL_RECALL = 0.96


@dataclass(frozen=True, order=True)
class Strategy:
    """Search replica ``dim`` directly, or (``funnel_factor`` set) shortlist ``top_k × funnel_factor``
    candidates on it and re-score them with the full-dimension vectors."""

    dim: int
    funnel_factor: int | None = None

    @property
    def name(self) -> str:
        return f"funnel {self.dim}d×{self.funnel_factor}" if self.funnel_factor else f"replica {self.dim}d"


@dataclass(frozen=True)
class Measured:
    """What one strategy costs: recall@10 against exact full-dimension search, median latency."""

    strategy: Strategy
    recall: float
    latency_ms: float


@dataclass
class Profile:
    """The measured (or default) cost of each strategy; latencies adapt through :meth:`observe`."""

    entries: dict[Strategy, Measured] = field(default_factory=dict)
    source: str = "default"

    @classmethod
    def default(cls, dims: Sequence[int]) -> Profile:
        """An estimate for replicas ``dims`` when nothing was measured: the full-dimension replica is
        exact (recall 1.0); funnel ×50 from the smallest replica is assumed to reach 0.96 (what eval-recall
        measured on MiniLM); direct search on a smaller replica is not offered (its recall varies too
        much by model to guess).  Latency is taken as proportional to the dimension scanned."""
        native, smallest = max(dims), min(dims)
        entries = [Measured(Strategy(native), 1.0, float(native))]
        if smallest < native:
            funnel = Strategy(smallest, DEFAULT_FUNNEL_FACTOR)
            entries.append(Measured(funnel, _DEFAULT_FUNNEL_RECALL, float(smallest) * 1.5))
        return cls({m.strategy: m for m in entries})

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, object]], source: str) -> Profile:
        """From eval-recall's rows: ``{"dim", "funnel_factor" (null for direct), "recall", "p50_ms"}``."""
        entries: dict[Strategy, Measured] = {}
        for row in rows:
            factor = row.get("funnel_factor")
            strategy = Strategy(int(str(row["dim"])), int(str(factor)) if factor else None)
            entries[strategy] = Measured(strategy, float(str(row["recall"])), float(str(row["p50_ms"])))
        if not entries:
            raise ValueError(f"recall profile {source} has no rows")
        return cls(entries, source)

    @classmethod
    def load(cls, path: Path, dims: Sequence[int]) -> Profile:
        """eval-recall's JSON at ``path``, keeping the strategies on replicas that exist (``dims``)."""
        data = json.loads(path.read_text())
        rows = [row for row in data["rows"] if int(row["dim"]) in dims]
        return cls.from_rows(rows, str(path))

    def observe(self, strategy: Strategy, latency_ms: float) -> None:
        """Fold one served search's latency into the strategy's (known strategies only)."""
        measured = self.entries.get(strategy)
        if measured is not None:
            smoothed = measured.latency_ms + _SMOOTHING * (latency_ms - measured.latency_ms)
            self.entries[strategy] = replace(measured, latency_ms=smoothed)


@dataclass(frozen=True)
class Choice:
    """The strategy picked for a request, what it is expected to cost, and why."""

    strategy: Strategy
    expected: Measured
    reason: str


def choose(
    profile: Profile, *, recall_target: float | None = None, latency_budget_ms: float | None = None
) -> Choice:
    """The strategy for a request (module docstring); raises ValueError for an empty profile or a
    recall target outside (0, 1] or a budget not above 0."""
    options = list(profile.entries.values())
    if not options:
        raise ValueError("the recall profile is empty")
    if recall_target is not None and not 0 < recall_target <= 1:
        raise ValueError(f"recall target must be in (0, 1], got {recall_target}")
    if latency_budget_ms is not None and latency_budget_ms <= 0:
        raise ValueError(f"latency budget must be positive, got {latency_budget_ms}")

    def fastest(pool: list[Measured]) -> Measured:
        return min(pool, key=lambda m: (m.latency_ms, -m.recall, m.strategy))

    def most_accurate(pool: list[Measured]) -> Measured:
        return min(pool, key=lambda m: (-m.recall, m.latency_ms, m.strategy))

    within = [m for m in options if latency_budget_ms is None or m.latency_ms <= latency_budget_ms]
    reaching = [m for m in within if recall_target is None or m.recall >= recall_target]
    if recall_target is None and latency_budget_ms is None:
        pick, reason = most_accurate(options), "no target given: the most accurate strategy"
    elif recall_target is None:
        pick, reason = (
            (most_accurate(within), "the most accurate strategy within the budget")
            if within
            else (fastest(options), "no strategy fits the latency budget: the fastest")
        )
    elif reaching:
        pick, reason = fastest(reaching), "the fastest strategy meeting the request"
    elif within:  # the recall target is out of reach (within the budget, if any)
        pick, reason = most_accurate(within), "recall target out of reach: the most accurate strategy"
    else:  # only a budget empties `within`
        pick, reason = fastest(options), "no strategy fits the latency budget: the fastest"
    return Choice(pick.strategy, pick, f"{reason} (profile: {profile.source})")
