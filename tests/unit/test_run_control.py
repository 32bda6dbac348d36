"""Step control: progress per step, stop on cancellation or after the time limit, step timings."""

import time

import pytest

from fluxfill.inpaint.errors import CancelledError, DeadlineExceededError
from fluxfill.inpaint.prompt_cache import PromptCache
from fluxfill.inpaint.run_control import StepGuard


def test_progress_is_reported_for_steps_only_and_timed() -> None:
    seen: list[tuple[int, int]] = []
    timed: list[float] = []
    guard = StepGuard(on_progress=lambda s, t: seen.append((s, t)), on_step_seconds=timed.append)
    for step in range(4):
        guard(step, 3)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert len(guard.step_durations) == len(timed) == 3
    assert all(seconds >= 0 for seconds in timed)


def test_cancellation_is_noticed_at_the_next_step() -> None:
    requests = iter([False, False, True])
    guard = StepGuard(is_cancelled=lambda: next(requests))
    guard(0, 9)
    guard(1, 9)
    with pytest.raises(CancelledError, match="after step 2 of 9"):
        guard(2, 9)


def test_time_limit_stops_the_run_with_a_deadline_message() -> None:
    guard = StepGuard(time_limit_s=0.01)
    guard(0, 5)
    time.sleep(0.02)
    with pytest.raises(
        DeadlineExceededError, match=r"^deadline exceeded: stopped after step 1 of 5: .* 0.01 s"
    ):
        guard(1, 5)


def test_prompt_cache_counts_hits_and_evicts_the_least_recently_used() -> None:
    encoded: list[str] = []
    cache = PromptCache(2, lambda prompt: encoded.append(prompt) or prompt.upper())
    assert [cache.get(p) for p in ("a", "b", "a", "c", "b")] == ["A", "B", "A", "C", "B"]
    assert encoded == ["a", "b", "c", "b"]  # "b" was evicted by "c", "a" was kept by its recent use
    assert (cache.stats.hits, cache.stats.misses) == (1, 4)
    assert len(cache) == 2


def test_prompt_cache_of_size_zero_always_encodes() -> None:
    encoded: list[str] = []
    cache = PromptCache(0, lambda prompt: encoded.append(prompt) or prompt)
    cache.get("a")
    cache.get("a")
    assert encoded == ["a", "a"]
    assert cache.stats.misses == 2
