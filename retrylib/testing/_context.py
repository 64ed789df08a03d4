"""The context-manager protocol of a server that has ``start()`` and ``stop()``, sync and async."""

from __future__ import annotations

import asyncio
from typing import Any, Self


class StartStop:
    """``with server:`` / ``async with server:`` start it and stop it (async: in a thread,
    since starting waits for the server to answer)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.stop)
