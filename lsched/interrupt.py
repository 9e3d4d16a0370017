"""Stopping long work on Ctrl-C (SIGINT) and keeping what is finished.

DESIGN.md: "a run stopped by the user says ``interrupted`` and keeps its
incumbent and bound". A solver runs in native code that Python's signal handling
cannot reach while it holds the main thread, so :func:`run_stoppable` runs it in
a worker thread and keeps the main thread waiting in Python: a ``SIGINT`` there
raises ``KeyboardInterrupt`` (Python's default handler) or calls
:func:`request` (the CLI's handler, :func:`sigint_requests_stop`); either way the
solver's own stop function is called (CP-SAT's ``stop_search``, a flag HiGHS's
interrupt callback reads), the worker returns its incumbent, and the request
stays set (:func:`requested`) so that the steps after it (the remaining policies
of ``compare``) are skipped.

A request lasts for one top-level call: :func:`session` clears it on entry to the
outermost one, so a notebook can run again after a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_requested = threading.Event()
_depth = 0
_stoppers: list[Callable[[], None]] = []
_lock = threading.Lock()

#: How often the waiting main thread wakes to notice a signal, seconds.
POLL_S = 0.05


def requested() -> bool:
    """Whether the user asked to stop (since the outermost :func:`session`)."""
    return _requested.is_set()


def request() -> None:
    """Ask every running stoppable solve to stop, and the work after it to skip."""
    _requested.set()
    with _lock:
        stoppers = list(_stoppers)
    for stop in stoppers:
        stop()


@contextlib.contextmanager
def session() -> Iterator[None]:
    """One top-level call: a stop requested before it does not carry into it."""
    global _depth
    if _depth == 0 and threading.current_thread() is threading.main_thread():
        _requested.clear()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def run_stoppable(work: Callable[[], T], stop: Callable[[], None]) -> tuple[T, bool]:
    """Run ``work()`` in a worker thread; call ``stop()`` on a stop request.

    Returns ``(work's value, whether a stop was requested while it ran)``. A
    ``KeyboardInterrupt`` in the waiting thread becomes a request. Off the main
    thread (where no signal arrives) ``work`` runs in place.
    """
    if threading.current_thread() is not threading.main_thread():
        with _registered(stop):
            if requested():
                stop()
            return work(), requested()
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as error:  # re-raised in the caller's thread
            box["error"] = error
        finally:
            done.set()

    worker = threading.Thread(target=target, name="lsched-solve", daemon=True)
    with _registered(stop):
        if requested():
            stop()
        worker.start()
        while not done.is_set():
            # an Event, not join(): a KeyboardInterrupt inside Thread.join can
            # leave the thread looking finished while it still runs
            try:
                done.wait(POLL_S)
            except KeyboardInterrupt:
                request()
    if "error" in box:
        raise box["error"]
    return box["value"], requested()


@contextlib.contextmanager
def _registered(stop: Callable[[], None]) -> Iterator[None]:
    with _lock:
        _stoppers.append(stop)
    try:
        yield
    finally:
        with _lock:
            _stoppers.remove(stop)


@contextlib.contextmanager
def sigint_requests_stop() -> Iterator[None]:
    """While inside, SIGINT calls :func:`request` instead of raising.

    For commands that check :func:`requested` between steps; a second SIGINT
    raises ``KeyboardInterrupt`` as usual, for a user who insists.
    """
    if threading.current_thread() is not threading.main_thread():
        with session():
            yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if requested():
            raise KeyboardInterrupt
        request()

    with session():  # a request made now holds for the calls inside
        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


__all__ = [
    "request",
    "requested",
    "run_stoppable",
    "session",
    "sigint_requests_stop",
]
