"""TimeBudget stops an engine once its wall-clock budget is spent, and does nothing without one."""

from __future__ import annotations

import time

from ignite.engine import Engine, Events

from medmtl.engines.time_budget import TimeBudget


def _engine(step_seconds: float) -> tuple[Engine, list[int]]:
    completed: list[int] = []
    engine = Engine(lambda e, b: time.sleep(step_seconds))
    engine.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.iteration))
    return engine, completed


def test_budget_terminates_mid_epoch_and_completed_handlers_run() -> None:
    engine, completed = _engine(0.02)
    budget = TimeBudget(minutes=0.1 / 60)  # 0.1 s
    budget.attach(engine)
    engine.run(range(100), max_epochs=5)
    assert budget.stopped_at_epoch == 1
    assert 3 <= engine.state.iteration < 100  # stopped inside the first epoch
    assert completed == [engine.state.iteration]


def test_no_budget_runs_to_the_end() -> None:
    engine, completed = _engine(0.0)
    TimeBudget(None).attach(engine)
    engine.run(range(10), max_epochs=3)
    assert engine.state.iteration == 30 and completed == [30]
