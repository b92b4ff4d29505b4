"""Server-Sent Events from synchronous iterators, and stopping them when the client leaves.

Core streams (generation, job events) are plain iterators that block. Each next item is
pulled in a worker thread; when the client disconnects Starlette cancels the response, and
the iterator is closed here, which stops the generation behind it (no orphan work).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

_END = object()


async def pulled(items: Iterable[Any]) -> AsyncIterator[Any]:
    """`items` one by one without blocking the event loop; closed however the loop ends
    (with the object's own `close` when it has one: a reply not yet started is stopped too)."""
    iterator = iter(items)
    try:
        while True:
            # Not abandoned on cancel: a cancel waits for the item in flight (one token), so
            # the iterator is never closed while another thread is inside it.
            item = await anyio.to_thread.run_sync(next, iterator, _END)
            if item is _END:
                return
            yield item
    finally:
        close = getattr(items, "close", None) or getattr(iterator, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)


def sse_event(data: Any, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)
