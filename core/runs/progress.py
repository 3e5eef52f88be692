"""Live progress of a run: its stage plan (stages weighted by their measured cost), the tracker
that turns the ``progress(stage, done, total)`` reports into payloads with the run's overall
fraction and timings, and the time-left estimate read back from a payload.

Pure: the clocks are passed in and nothing is stored here (``core.execution`` writes the
payloads to the control store, ``core.present.runs`` shows them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]


@dataclass(frozen=True)
class Stage:
    """One step of a run's plan."""

    key: str  # the reported stage name, or its first words ('zero-shot' for 'zero-shot piqa')
    cost: float  # expected seconds on the reference machine (core.runs.costs); only shares matter
    unit: str = ""  # what done / total count ('block', 'window', 'task'); '' for one step

    def matches(self, name: str) -> bool:
        """Whether the reported stage ``name`` is this stage."""
        return name == self.key or name.startswith(self.key + " ")


def weights(plan: Sequence[Stage]) -> list[float]:
    """Each stage's share of the plan's cost (equal shares when nothing costs anything)."""
    costs = [max(float(s.cost), 0.0) for s in plan]
    total = sum(costs)
    if total <= 0:
        return [1 / len(plan)] * len(plan) if plan else []
    return [c / total for c in costs]


def stage_fraction(done: int, total: int) -> float:
    """How far a stage is, in [0, 1] (0 without a total)."""
    return min(max(done / total, 0.0), 1.0) if total > 0 else 0.0


def overall(finished: float, current: float, done: int, total: int) -> float:
    """The run's fraction: the finished stages' shares plus the current stage's share times
    its own fraction."""
    return min(finished + current * stage_fraction(done, total), 1.0)


# -- the estimate -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """What one progress payload says about time (seconds of the run's monotonic clock)."""

    at: float  # wall clock (time.time()) of the update
    stage_s: float  # how long the current stage had run at the update
    finished_s: float  # how long the finished stages took
    finished_weight: float  # their share of the plan
    weight: float  # the current stage's share
    later_weight: float  # the share of the stages after it

    FIELDS = ("at", "stage_s", "finished_s", "finished_weight", "weight", "later_weight")

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Timing | None:
        """The timing of a payload; None when it has none (written by an older worker)."""
        try:
            values = [float(payload[name]) for name in cls.FIELDS]
        except (KeyError, TypeError, ValueError):
            return None
        return cls(*values) if all(math.isfinite(v) for v in values) else None


@dataclass(frozen=True)
class Estimate:
    rate: float | None  # units of the current stage per second
    left_s: float | None  # seconds left of the whole run


#: The least time left said while work remains (the estimate never reads 0 s before the end).
MIN_LEFT_S = 1.0


def estimate(done: int, total: int, timing: Timing, now: float) -> Estimate:
    """The current stage's rate and the run's time left at wall time ``now``.

    The rest of this stage goes at its measured rate, less the time since the update (at most
    one unit's worth: a unit slower than the others holds the estimate rather than taking it
    to zero); each later stage takes its share of the plan at the pace of the work done so
    far (finished stages plus the done part of this one: seconds per share).  While work
    remains the time left is at least ``MIN_LEFT_S``.  No estimate before a unit of this stage
    is done or when it has taken no time; a ``now`` before the update (a clock going
    backwards) counts as the update's time."""
    if done <= 0 or total <= 0 or timing.stage_s <= 0:
        return Estimate(None, None)
    rate = done / timing.stage_s
    since = min(max(now - timing.at, 0.0), 1 / rate)
    stage_left = max((total - min(done, total)) / rate - since, 0.0)
    worked = timing.finished_weight + timing.weight * stage_fraction(done, total)
    spent = timing.finished_s + timing.stage_s
    later = spent / worked * timing.later_weight if worked > 0 else 0.0
    left = stage_left + later
    if done < total or timing.later_weight > 0:
        left = max(left, MIN_LEFT_S)
    return Estimate(rate, left)


# -- the tracker --------------------------------------------------------------------------------
class Tracker:
    """Turns one run's progress reports into payloads: which step of the plan it is on, the
    run's overall fraction and the timings ``estimate`` needs.  Without a plan every new stage
    name is a step of its own and the fraction is the stage's."""

    def __init__(self, plan: Sequence[Stage] | None = None, clock: Clock = time.monotonic,
                 wall: Clock = time.time) -> None:
        self.plan = list(plan or [])
        self.shares = weights(self.plan)
        self.clock, self.wall = clock, wall
        self.step = -1  # the current step (-1 before the first report)
        self.name: str | None = None  # the current stage's reported name
        self.started = 0.0  # the clock when the current step began
        self.finished_s = 0.0  # seconds of the finished steps
        self.last = -math.inf  # the latest clock reading: a clock going backwards is ignored

    def _now(self) -> float:
        self.last = max(self.clock(), self.last)
        return self.last

    def _locate(self, stage: str) -> int:
        """The step of the reported ``stage``: the first at or after the current one whose key
        is the name, else the first it matches; the current one when none does (so progress
        never goes back).  Without a plan: the next step when the name changes."""
        if not self.plan:
            return self.step + (stage != self.name or self.step < 0)
        ahead = range(max(self.step, 0), len(self.plan))
        for i in [*(i for i in ahead if self.plan[i].key == stage),
                  *(i for i in ahead if self.plan[i].matches(stage))]:
            return i
        return max(self.step, 0)

    def _shares(self) -> tuple[float, float, float]:
        """(finished, current, later) shares of the plan at the current step."""
        if not self.plan:
            return 0.0, 1.0, 0.0
        step = self.step
        return sum(self.shares[:step]), self.shares[step], sum(self.shares[step + 1:])

    def report(self, stage: str, done: int, total: int) -> dict[str, Any]:
        """The payload of one report (beside stage, done and total): step, steps, unit,
        fraction and the ``Timing`` fields."""
        now = self._now()
        step = self._locate(stage)
        if step != self.step:
            if self.step >= 0:
                self.finished_s += now - self.started
            self.step, self.started = step, now
        self.name = stage
        finished, current, later = self._shares()
        unit = self.plan[step].unit if self.plan and self.plan[step].matches(stage) else ""
        return {"step": step + 1, "steps": len(self.plan) or None, "unit": unit,
                "fraction": round(overall(finished, current, done, total), 4),
                "at": round(self.wall(), 3), "stage_s": round(now - self.started, 3),
                "finished_s": round(self.finished_s, 3), "finished_weight": round(finished, 6),
                "weight": round(current, 6), "later_weight": round(later, 6)}


def throttled(tracker: Tracker, send: Callable[[str, int, int, dict[str, Any]], None],
              every_s: float, clock: Clock = time.monotonic) -> Callable[[str, int, int], None]:
    """A progress function that gives every report to ``tracker`` (so each stage is timed from
    its start) and passes at most one per ``every_s`` on to ``send(stage, done, total,
    payload)``; a new stage and a stage's last step always go."""
    last = [-math.inf]

    def progress(stage: str, done: int, total: int) -> None:
        step = tracker.step
        payload = tracker.report(stage, done, total)
        now = clock()
        if now - last[0] < every_s and done < total and tracker.step == step:
            return
        last[0] = now
        send(stage, done, total, payload)

    return progress
