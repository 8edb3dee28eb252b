"""DataLoader worker processes: telling their deaths and their errors apart, and stopping them.

torch reports a worker that died (a decoder crashed on a file, the system killed it) as a
RuntimeError naming "DataLoader worker (pid N)", raised where the loader is read or, through
its SIGCHLD handler, anywhere in the main thread; and an exception a worker raised as the same
type, its whole traceback as the text.
"""

from __future__ import annotations

import re

MARK = "DataLoader worker"


def died(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and MARK in str(err)


def dead_pids(err: BaseException) -> set[int]:
    """The process ids torch names ("pid 811" or "pid(s) 811, 812"); empty when it names none."""
    found = re.search(r"pid(?:\(s\))? ([\d, ]+)", str(err))
    return {int(pid) for pid in re.findall(r"\d+", found.group(1))} if found else set()


def message(err: BaseException) -> str:
    """The text an exception was raised with, also when a worker raised it (the last line of
    the traceback torch passes on is 'module.Type: text')."""
    text = str(err)
    if MARK not in text:
        return text
    return text.rstrip().splitlines()[-1].partition(": ")[2]


def stop(loader) -> None:
    """Shut a loader's workers down now, where the error torch's SIGCHLD handler raises for a
    dead one is caught, rather than later, in a destructor or in the middle of other work."""
    for _ in range(3):
        try:
            getattr(loader, "_shutdown_workers", lambda: None)()
            return
        except Exception:
            continue


def quiet_crash(worker_id: int) -> None:
    """A DataLoader worker_init_fn: a worker that crashes dies without torch's own "ERROR:
    Unexpected segmentation fault encountered in worker." line; the main process names the file."""
    import signal

    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE):
        signal.signal(sig, signal.SIG_DFL)


def opened_quietly(open_loader):
    """`open_loader()` (which makes a DataLoader iterator), leaving SIGCHLD as it was. torch's
    SIGCHLD handler raises a worker's death anywhere in the main thread, in the middle of a
    training step; without it the iterator raises it where a batch is read (within the 5 s
    torch waits before checking its workers), where it can be handled. torch's advice on
    --workers above the core count is not shown: the user chose the number."""
    import signal
    import threading
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes")
        if threading.current_thread() is not threading.main_thread():
            return open_loader()
        previous = signal.getsignal(signal.SIGCHLD)
        try:
            return open_loader()
        finally:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL if previous is None else previous)
