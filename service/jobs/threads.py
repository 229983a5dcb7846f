"""Long blocking steps (a training, a fine-tune) on daemon threads that no shutdown waits for.

``asyncio.to_thread`` runs on the loop's default executor, whose threads asyncio joins when the
loop closes (and Python 3.11 joins them inside the event loop, past any timeout), and which
``concurrent.futures`` joins again at interpreter exit: one running fine-tune held `serve` for
minutes after its grace. A daemon thread is waited for by nobody. When the process stops
mid-step the job is simply left ``running``, and the next worker requeues it once its heartbeat
is stale; cancelling the await leaves the thread to finish on its own and drops its result.
"""

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_daemon_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``await asyncio.to_thread(fn, ...)``, on a daemon thread of its own."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # cancelled: nobody waits for the result any more
            outcome()

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, outcome)

    name = f"labelloop-{getattr(fn, '__name__', 'step')}"
    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
