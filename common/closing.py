"""``with thing:`` for the things that have a ``close()``: given back as they are, closed after."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ClosedOnExit:
    """A base for classes with a ``close()``: ``with obj:`` yields ``obj`` and closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
