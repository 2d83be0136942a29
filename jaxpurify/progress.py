"""Console output: progress display for long loops (a rich bar on a terminal, plain log lines
elsewhere) and plain-text tables (:func:`table`).

    with Progress(total=steps, desc="train") as bar:
        for i in range(steps):
            ...
            bar.update(1, loss=0.31)

    for batch in progress(batches, desc="purify"):
        ...

On a terminal the display is ``rich.progress`` (a maintained library, installed with Flax). When
the stream is not a terminal (a log file, a pipe, CI), it prints whole lines, one per tenth of the
total and at most every ``interval`` seconds otherwise, plus a final line: no ``\\r``, no escape
codes, so logs stay readable. It writes to stderr by default so that stdout stays free for a
command's own output (a report, JSON). ``disable=True`` or the environment variable
``JAXPURIFY_PROGRESS=0`` silences it entirely.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from jaxpurify._table import table

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

T = TypeVar("T")

ENV = "JAXPURIFY_PROGRESS"

__all__ = ["Progress", "progress", "table"]


def disabled_by_env() -> bool:
    """True when ``JAXPURIFY_PROGRESS`` is set to 0 / false / no / off."""
    return os.environ.get(ENV, "").strip().lower() in {"0", "false", "no", "off"}


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _format_postfix(postfix: dict[str, Any]) -> str:
    return " ".join(f"{k}={_format_value(v)}" for k, v in postfix.items())


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class Progress:
    """A progress handle: ``update(n=1, **postfix)`` advances by n and shows the postfix values.

    Args:
      total: number of units expected (None when unknown).
      desc: a short label printed before the counts.
      disable: True silences; None (default) follows ``JAXPURIFY_PROGRESS``.
      stream: where to write (default ``sys.stderr``); a rich bar only if it is a terminal.
      interval: seconds between plain lines when no tenth of the total has been crossed.
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        *,
        disable: bool | None = None,
        stream: TextIO | None = None,
        interval: float = 10.0,
    ):
        if total is not None and total < 0:
            raise ValueError(f"total must be ≥ 0 or None, got {total}")
        self.total = total
        self.desc = desc
        self.count = 0
        self.postfix: dict[str, Any] = {}
        self.disabled = disabled_by_env() if disable is None else bool(disable)
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._start = time.monotonic()
        self._last_line = self._start
        self._last_tenth = 0
        self._printed: int | None = None  # the count shown by the last plain line
        self._closed = False
        self._rich: RichProgress | None = None
        self._task: TaskID | None = None
        if not self.disabled and _is_terminal(self._stream):
            self._rich = self._make_rich()

    def _make_rich(self) -> RichProgress | None:
        try:
            from rich import progress as rp
            from rich.console import Console
        except ImportError:  # fall back to plain lines; rich is optional at run time
            return None
        bar = rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TimeElapsedColumn(),
            rp.TimeRemainingColumn(),
            rp.TextColumn("{task.fields[postfix]}"),
            console=Console(file=self._stream),
            transient=False,
            # prints above the bar only for streams on the terminal too: rich sends redirected
            # prints to the bar's stream, which would move piped stdout output onto stderr
            redirect_stdout=_is_terminal(sys.stdout),
            redirect_stderr=_is_terminal(sys.stderr),
        )
        bar.start()
        self._task = bar.add_task(self.desc, total=self.total, postfix="")
        return bar

    # -- updating -------------------------------------------------------------------------------

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` units; keyword values (e.g. ``loss=0.3``) are shown after the counts."""
        self.count += n
        if postfix:
            self.postfix.update(postfix)
        if self.disabled or self._closed:
            return
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, advance=n, postfix=_format_postfix(self.postfix))
            return
        now = time.monotonic()
        tenth = (10 * self.count) // self.total if self.total else 0
        if tenth > self._last_tenth or now - self._last_line >= self._interval:
            self._last_tenth = tenth
            self._write_line(now)

    def _write_line(self, now: float) -> None:
        self._last_line = now
        self._printed = self.count
        counts = f"{self.count}/{self.total}" if self.total is not None else f"{self.count}"
        parts = [f"{self.desc}:" if self.desc else "", counts, f"{now - self._start:.1f}s"]
        if self.postfix:
            parts.append(_format_postfix(self.postfix))
        self._stream.write(" ".join(p for p in parts if p) + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Finish the display: stop the rich bar, or print the final plain line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.disabled:
            return
        if self._rich is not None:
            self._rich.stop()
        elif self._printed != self.count:  # the final count, unless the last line showed it
            self._write_line(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    *,
    disable: bool | None = None,
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Yield the items of ``iterable`` while showing progress (``total`` defaults to its len)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, disable=disable, stream=stream) as bar:
        for item in iterable:
            yield item
            bar.update(1)
