"""Where sweep cases run (:mod:`lsched.sweep`): a local process pool or Dask.

:func:`open_executor` gives a :class:`concurrent.futures.Executor` and how many
cases to keep in flight on it; :func:`check_executor` checks its settings without
starting one. A local pool's workers stay quiet on stdout, ignore Ctrl-C (the
parent handles it) and exit cleanly when the parent ends them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

from lsched.checks import check_workers
from lsched.errors import InputError

#: Executors :func:`~lsched.sweep.run_sweep` accepts.
EXECUTORS: tuple[str, ...] = ("local", "dask")


def _init_worker() -> None:
    """Worker initializer: no solver banner on the user's stdout, no Ctrl-C, and
    a clean exit on SIGTERM.

    HiGHS prints to the C-level stdout whatever its options; a worker process
    shares the parent's, which may carry ``--json`` output. A Ctrl-C in a
    terminal reaches the whole process group: the parent alone handles it, so a
    worker ignores it rather than dying midway through a case. The parent ends
    its workers with SIGTERM (:func:`_end_workers`): as an exit, not a kill, so
    that what a worker registered (Pyomo's lock, a named semaphore) is released.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


#: Seconds a worker has to exit on SIGTERM before it is killed.
WORKER_GRACE_S = 5.0


def _end_workers(pool: Any) -> None:
    """Cancel what a process pool has not started and end its workers now.

    ``shutdown(wait=False)`` alone lets the cases in flight run on, and the
    interpreter waits for them at exit; their results would be dropped anyway.
    Each worker gets SIGTERM (an exit, :func:`_init_worker`), and is killed if
    it has not exited within :data:`WORKER_GRACE_S` (native code that holds
    the interpreter).
    """
    # before shutdown, which forgets them
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    give_up = time.monotonic() + WORKER_GRACE_S
    for process in processes:
        process.join(max(0.0, give_up - time.monotonic()))
        if process.is_alive():
            process.kill()


def check_executor(
    kind: str, *, address: str | None = None, workers: int | None = None
) -> None:
    """Check executor settings (see :func:`open_executor`) without starting one.

    Raises
    ------
    InputError
        On an unknown kind, a bad ``workers``, or an address missing (``dask``)
        or given (``local``); the field is ``executor``, ``address`` or
        ``workers``.
    """
    if kind not in EXECUTORS:
        raise InputError(
            f"got {kind!r}; expected one of {', '.join(EXECUTORS)}", field="executor"
        )
    if workers is not None:
        check_workers(workers, "workers")
    if kind == "local" and address is not None:
        raise InputError(
            "applies to the dask executor only; expected no address", field="address"
        )
    if kind == "dask" and not address:
        raise InputError(
            "is required with the dask executor; expected tcp://HOST:PORT",
            field="address",
        )


@contextlib.contextmanager
def open_executor(
    kind: str = "local", *, address: str | None = None, workers: int | None = None
) -> Iterator[tuple[Executor, int]]:
    """An executor and how many cases to keep in flight on it.

    Parameters
    ----------
    kind
        ``local``: a process pool of ``workers`` processes (default: the CPU
        count), started with ``spawn``. ``dask``: the cluster at ``address``
        through :meth:`distributed.Client.get_executor`; ``workers`` caps the
        cases in flight (default: the cluster's threads).
    address
        The Dask scheduler, ``tcp://HOST:PORT`` (``dask`` only).
    workers
        See ``kind``; >= 1.

    Raises
    ------
    InputError
        On an unknown kind, a bad ``workers``, a missing address, or a scheduler
        that cannot be reached.

    Notes
    -----
    ``spawn`` starts each worker as a fresh interpreter that imports the
    caller's main module: a script that runs a local sweep needs the usual
    ``if __name__ == "__main__":`` guard (notebooks and the CLI need nothing).
    """
    check_executor(kind, address=address, workers=workers)
    if kind == "local":
        count = workers or os.cpu_count() or 1
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(
            count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )
        try:
            yield pool, count
        except BaseException:  # a failure or a stop: nothing in flight is kept
            _end_workers(pool)
            raise
        pool.shutdown(wait=True)
        return
    from distributed import Client

    try:
        client = Client(address, set_as_default=False, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise InputError(
            f"cannot reach the Dask scheduler {address!r}: {exc}", field="address"
        ) from None
    try:
        threads = sum(client.nthreads().values())
        executor = client.get_executor(pure=False)
        try:
            yield executor, workers or max(1, threads)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        executor.shutdown(wait=True)
    finally:
        client.close()
