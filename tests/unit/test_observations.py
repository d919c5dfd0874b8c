"""One observation per job shared by dispatch rounds and status calls (jobs.observations)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fake_backend import record

from llama_stack_provider_kfp.jobs.backend import Observed
from llama_stack_provider_kfp.jobs.observations import Observations


class Counting:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.status = "in_progress"
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, rec) -> Observed:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        return Observed(self.status)  # type: ignore[arg-type]


def test_callers_within_the_age_share_one_observation():
    observe = Counting(delay=0.05)
    obs = Observations(observe, max_age=60)
    rec = record("a", 0)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: obs.get(rec).status, range(64)))
    assert answers == ["in_progress"] * 64
    assert observe.calls == 1  # the others waited for the one in flight


def test_an_old_observation_is_renewed_and_a_round_always_observes():
    observe = Counting()
    obs = Observations(observe, max_age=0.05)
    rec = record("a", 0)
    obs.get(rec)
    obs.get(rec)
    assert observe.calls == 1
    time.sleep(0.06)
    obs.get(rec)
    assert observe.calls == 2
    obs.fresh(rec)
    assert observe.calls == 3


def test_invalidate_drops_the_cached_answer_and_one_in_flight():
    observe = Counting(delay=0.1)
    obs = Observations(observe, max_age=60)
    rec = record("a", 0)
    t = threading.Thread(target=obs.get, args=(rec,))
    t.start()
    time.sleep(0.03)
    observe.status = "cancelled"
    obs.invalidate("a")  # a cancel recorded while the old observation was being made
    t.join()
    assert obs.get(rec).status == "cancelled"
    assert observe.calls == 2
