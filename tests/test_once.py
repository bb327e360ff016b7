"""OncePerKey: one successful run per key, shared by concurrent callers, in bounded memory."""

from __future__ import annotations

import threading
import time

import pytest

from checkout.once import OncePerKey


def test_an_action_runs_once_per_key():
    once = OncePerKey(10)
    runs: list[str] = []
    assert once.run("a", lambda: runs.append("a")) is True
    assert once.run("a", lambda: runs.append("a")) is False
    assert once.run("b", lambda: runs.append("b")) is True
    assert runs == ["a", "b"]
    assert "a" in once and "c" not in once


def test_a_failure_is_not_remembered():
    once = OncePerKey(10)

    def fail() -> None:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        once.run("a", fail)
    assert "a" not in once
    assert once.run("a", lambda: None) is True


def test_concurrent_callers_share_one_run():
    once = OncePerKey(10)
    runs: list[int] = []
    barrier = threading.Barrier(20)
    results: list[bool] = []

    def slow() -> None:
        runs.append(1)
        time.sleep(0.1)

    def call() -> None:
        barrier.wait()
        results.append(once.run("a", slow))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(runs) == 1
    assert sorted(results) == [False] * 19 + [True]


def test_a_waiting_caller_tries_itself_when_the_first_attempt_fails():
    once = OncePerKey(10)
    started = threading.Event()
    attempts: list[str] = []

    def failing_slowly() -> None:
        attempts.append("first")
        started.set()
        time.sleep(0.1)
        raise RuntimeError("down")

    def first() -> None:
        with pytest.raises(RuntimeError):
            once.run("a", failing_slowly)

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(5)
    assert once.run("a", lambda: attempts.append("second")) is True
    thread.join(timeout=5)
    assert attempts == ["first", "second"]


def test_memory_is_bounded_least_recently_seen_first():
    once = OncePerKey(2)
    for key in "abc":
        once.run(key, lambda: None)
    assert "a" not in once and "b" in once and "c" in once
    once.run("b", lambda: None)  # seen again: now the most recent
    once.run("d", lambda: None)
    assert "b" in once and "c" not in once
