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

There is no default profile: recall depends on the model and the corpus and latency on the machine, so
nothing here is assumed.  Without a measured profile (``search.profile_path`` unset) :func:`route`
answers every recall target or latency budget with the native replica (exact) and says why
(:data:`NO_PROFILE_REASON`).

Latencies are updated while serving (:meth:`Profile.observe`, an exponential moving average), so a
profile measured on another box converges to this one's.  Pure: no I/O besides :meth:`Profile.load`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

_SMOOTHING = 0.2

NO_PROFILE_REASON = (
    "no recall/latency profile was measured (search.profile_path is unset), so nothing says which "
    "strategy meets the request: the native replica (exact). To route, measure one with "
    "`python -m pipeline eval-recall ... --out DIR` and set search.profile_path to DIR/recall.json"
)
"""Why :func:`route` answers with the native replica when there is no measured profile."""


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
    """The measured cost of each strategy (eval-recall's rows, from ``source``); latencies adapt
    through :meth:`observe`.  Every figure comes from a measurement: there is no default profile."""

    entries: dict[Strategy, Measured] = field(default_factory=dict)
    source: str = ""

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
    """The strategy picked for a request, what it was measured to cost (None: nothing was measured
    for it), and why."""

    strategy: Strategy
    expected: Measured | None
    reason: str


def _check_request(recall_target: float | None, latency_budget_ms: float | None) -> None:
    if recall_target is not None and not 0 < recall_target <= 1:
        raise ValueError(f"recall target must be in (0, 1], got {recall_target}")
    if latency_budget_ms is not None and latency_budget_ms <= 0:
        raise ValueError(f"latency budget must be positive, got {latency_budget_ms}")


def route(
    profile: Profile | None,
    native_dim: int,
    *,
    recall_target: float | None = None,
    latency_budget_ms: float | None = None,
) -> Choice:
    """:func:`choose` over ``profile``; without one (None), the native replica ``native_dim`` with
    :data:`NO_PROFILE_REASON` when a target or budget was asked for: no figure is assumed.  Raises
    ValueError for a recall target outside (0, 1] or a budget not above 0, profile or not."""
    _check_request(recall_target, latency_budget_ms)
    if profile is not None:
        return choose(profile, recall_target=recall_target, latency_budget_ms=latency_budget_ms)
    if recall_target is None and latency_budget_ms is None:
        return Choice(Strategy(native_dim), None, "no target given: the native replica (exact)")
    return Choice(Strategy(native_dim), None, NO_PROFILE_REASON)


def choose(
    profile: Profile, *, recall_target: float | None = None, latency_budget_ms: float | None = None
) -> Choice:
    """The strategy for a request over a measured profile (module docstring); raises ValueError for an
    empty profile or a recall target outside (0, 1] or a budget not above 0."""
    options = list(profile.entries.values())
    if not options:
        raise ValueError("the recall profile is empty")
    _check_request(recall_target, latency_budget_ms)

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
    return Choice(pick.strategy, pick, f"{reason} (measured profile: {profile.source})")
