"""Streaming stages: chunks flow along the DAG's edges while the producing stage still runs.

A stage whose runner is an async generator function (or whose ``execute`` is one) **streams**: every chunk
it yields goes, in order, to each dependent that declared ``streams=("producer",)``; such a dependent starts
at the producer's first chunk (or at its end, if it yielded none) and reads with
``async for chunk in ctx.inputs.stream("producer")``. Every other dependent starts when the producer ended
and sees its aggregate output, as for any stage: by default ``StageOutput.ok(chunks=[...])``; with
``Streaming(key="text", reduce="".join)``, ``StageOutput.ok(text="".join(chunks))``.

Semantics:

* **Backpressure.** Each consumer has its own bounded buffer (``Streaming(buffer=16)``); the producer waits
  for room in every consumer's buffer before it goes on, so a slow consumer slows the producer and memory
  stays bounded (``collect=False`` also drops the aggregate: the output then holds only the chunk count).
* **Failure.** A producer that raises mid-stream fails the run as any stage does; a consumer still reading
  its stream gets ``StreamError`` (its ``__cause__`` the producer's error) at the chunk where it happened.
* **Cancellation.** Cancelling the run (a barge-in) cancels the producer at its next chunk or await and
  closes its generator; consumers are cancelled with the run. A generator that catches the cancellation
  and yields again is stopped at that chunk (the chunk is dropped) and closed.
* **Retries and timeouts.** A streaming stage is retried only while no chunk was delivered: once a chunk
  went out, an error fails the stage. ``timeout`` (``with_stage(timeout=)`` or ``TimeoutInterceptor``)
  bounds the whole stream of an attempt.
* **Measurements** (monotonic clock, by the engine): time to first chunk, chunk count, stream duration and
  time per output chunk, on ``StageResult``, in the ``stage.{name}.first_chunk`` event (once) and on the
  closing event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import StreamError

if TYPE_CHECKING:
    from ._context import StageContext
    from ._types import StageOutput

__all__ = ("Channel", "StreamCall", "StreamReader", "StreamState", "Streaming", "per_chunk")

_perf = time.perf_counter
logger = logging.getLogger("stageflow")
_END = object()


@dataclass(frozen=True, slots=True)
class Streaming:
    """How a streaming stage's chunks are buffered and aggregated.

    Attributes:
        key: the output key of the aggregate (default ``"chunks"``).
        reduce: turns the list of chunks into the aggregate (default: the list itself), e.g. ``"".join``.
        buffer: chunks each consumer may hold unread before the producer waits (default 16, at least 1).
        collect: keep the chunks for the aggregate (default ``True``); ``False`` keeps memory flat for
            endless streams: the output then holds only ``{"chunk_count": n}``.
        chunk_type: when given, every chunk must be an instance of it (checked as it is yielded).

    .. versionadded:: 0.11
    """

    key: str = "chunks"
    reduce: Callable[[list[Any]], Any] | None = None
    buffer: int = 16
    collect: bool = True
    chunk_type: type | tuple[type, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            msg = f"Streaming(key={self.key!r}) is invalid; pass a non-empty str such as 'text'"
            raise ValueError(msg)
        if self.reduce is not None and not callable(self.reduce):
            msg = f"Streaming(reduce={self.reduce!r}) is not callable; pass a function of the chunk list"
            raise TypeError(msg)
        if type(self.buffer) is not int or self.buffer < 1:
            msg = f"Streaming(buffer={self.buffer!r}) is invalid; pass a positive int such as 16"
            raise ValueError(msg)
        if type(self.collect) is not bool:
            msg = f"Streaming(collect={self.collect!r}) is invalid; pass True or False"
            raise TypeError(msg)
        if self.reduce is not None and not self.collect:
            msg = "Streaming(reduce=..., collect=False) cannot reduce chunks it does not keep; drop one"
            raise ValueError(msg)
        if self.chunk_type is not None:
            try:
                isinstance(None, self.chunk_type)
            except TypeError:
                msg = f"Streaming(chunk_type={self.chunk_type!r}) is invalid; pass a type or a tuple of types"
                raise TypeError(msg) from None


DEFAULT_STREAMING = Streaming()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Pipe:
    """One consumer's bounded buffer: one writer (the producer), one reader. The end marker always fits."""

    __slots__ = ("detached", "getter", "items", "limit", "putter")

    def __init__(self, limit: int) -> None:
        self.items: deque[Any] = deque()
        self.limit = limit
        self.getter: asyncio.Future[None] | None = None
        self.putter: asyncio.Future[None] | None = None
        self.detached = False

    def detach(self) -> None:
        """Its consumer ended: drop what it left unread and never hold the producer for it again."""
        self.detached = True
        self.items.clear()
        putter = self.putter
        if putter is not None and not putter.done():
            putter.set_result(None)

    async def put(self, item: Any) -> None:
        while len(self.items) >= self.limit:
            if self.detached:
                return
            self.putter = asyncio.get_running_loop().create_future()
            try:
                await self.putter
            finally:
                self.putter = None
        if self.detached:
            return
        self.items.append(item)
        getter = self.getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def end(self, marker: Any) -> None:
        self.items.append(marker)
        getter = self.getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def get(self) -> Any:
        while not self.items:
            self.getter = asyncio.get_running_loop().create_future()
            try:
                await self.getter
            finally:
                self.getter = None
        item = self.items.popleft()
        putter = self.putter
        if putter is not None and not putter.done():
            putter.set_result(None)
        return item


class Channel:
    """One producer's broadcast: a bounded pipe per consumer, filled in order."""

    __slots__ = ("closed", "pipes")

    def __init__(self, consumers: tuple[str, ...], buffer: int) -> None:
        self.pipes: dict[str, _Pipe] = {c: _Pipe(buffer) for c in consumers}
        self.closed = False

    async def send(self, chunk: Any) -> None:
        for pipe in self.pipes.values():
            if pipe.detached:  # its consumer ended without reading it all
                continue
            if len(pipe.items) < pipe.limit:  # room: no await, no task switch
                pipe.items.append(chunk)
                getter = pipe.getter
                if getter is not None and not getter.done():
                    getter.set_result(None)
            else:
                await pipe.put(chunk)

    def close(self, failure: BaseException | None = None) -> None:
        """End every consumer's stream (with ``failure`` raised at its end); never waits."""
        if self.closed:
            return
        self.closed = True
        marker = _END if failure is None else _Failure(failure)
        for pipe in self.pipes.values():
            pipe.end(marker)

    def detach(self, consumer: str) -> None:
        """``consumer`` ended (or was skipped): the producer no longer waits for room in its buffer."""
        self.pipes[consumer].detach()

    def reader(self, consumer: str, producer: str) -> StreamReader:
        return StreamReader(self.pipes[consumer], consumer, producer)


class StreamReader:
    """What ``ctx.inputs.stream(name)`` returns: the producer's chunks, in order (``async for``).

    .. versionadded:: 0.11
    """

    __slots__ = ("_done", "_pipe", "consumer", "producer", "read")

    def __init__(self, pipe: _Pipe, consumer: str, producer: str) -> None:
        self._pipe = pipe
        self.consumer = consumer
        self.producer = producer
        self.read = 0
        self._done = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        pipe = self._pipe
        if pipe.items:
            item = pipe.items.popleft()
            putter = pipe.putter
            if putter is not None and not putter.done():
                putter.set_result(None)
        else:
            item = await pipe.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if type(item) is _Failure:
            self._done = True
            raise StreamError(self.consumer, self.producer, self.read, item.error) from item.error
        self.read += 1
        return item

    def __repr__(self) -> str:
        return f"StreamReader({self.producer!r} -> {self.consumer!r}, read={self.read})"


class StreamState:
    """One streaming stage's run: its channel, what to do at its first chunk, and what the engine measured."""

    __slots__ = ("channel", "chunks", "first_at", "last_at", "on_first", "readers")

    def __init__(self, channel: Channel | None, on_first: Callable[[], None] | None) -> None:
        self.channel = channel
        self.on_first = on_first
        self.readers: list[Any] = []  # the StageInputs of the consumers that started before its end
        self.chunks = 0
        self.first_at: float | None = None
        self.last_at: float | None = None


class StreamCall:
    """The innermost call of a streaming stage: drain its generator into its channel, return the aggregate."""

    __slots__ = ("factory", "settings", "stage")

    def __init__(
        self, stage: str, factory: Callable[[StageContext], AsyncIterator[Any]], settings: Streaming
    ) -> None:
        self.stage = stage
        self.factory = factory
        self.settings = settings

    async def __call__(self, ctx: StageContext) -> StageOutput:
        from ._types import StageOutput

        settings = self.settings
        state: StreamState = ctx._stream
        channel = state.channel
        collected: list[Any] | None = [] if settings.collect else None
        chunk_type = settings.chunk_type
        generator = self.factory(ctx)
        task = asyncio.current_task()
        count = 0
        try:
            async for chunk in generator:
                if task is not None and task.cancelling():  # it yielded although it was cancelled
                    raise asyncio.CancelledError(f"stage {self.stage!r} was cancelled")
                if chunk_type is not None and not isinstance(chunk, chunk_type):
                    raise TypeError(
                        f"stage {self.stage!r} yielded chunk {count} of type {type(chunk).__name__}; its "
                        f"Streaming(chunk_type=...) wants {_type_names(chunk_type)}"
                    )
                now = _perf()
                if state.first_at is None:
                    state.first_at = now
                    if state.on_first is not None:
                        state.on_first()
                state.last_at = now
                state.chunks += 1
                count += 1
                if collected is not None:
                    collected.append(chunk)
                if channel is not None:
                    await channel.send(chunk)
        finally:
            try:
                await generator.aclose()  # type: ignore[attr-defined]
            except RuntimeError as exc:  # it yielded again when closed: it is closed anyway
                logger.error("stageflow: streaming stage %r ignored its close: %r", self.stage, exc)
        if collected is None:
            return StageOutput.ok(chunk_count=count)
        value = collected if settings.reduce is None else settings.reduce(collected)
        return StageOutput.ok({settings.key: value})


def _type_names(chunk_type: type | tuple[type, ...]) -> str:
    if isinstance(chunk_type, tuple):
        return " or ".join(t.__name__ for t in chunk_type)
    return chunk_type.__name__


def per_chunk(chunks: int, first_at: float | None, last_at: float | None) -> float | None:
    """Seconds per output chunk after the first (``None`` with fewer than two chunks)."""
    if first_at is None or last_at is None or chunks < 2:
        return None
    return (last_at - first_at) / (chunks - 1)
