"""`AsyncLLMEngine`: the engine loop on its own thread, requests as async iterators of outputs.

Callers (the Serve replica, the benchmark) tokenize with `encode` / `encode_chat`, then `async
for out in engine.generate(prompt_ids, ...)` from any event loop; the loop thread drains new
requests and aborts between steps and hands each step's outputs back with `call_soon_threadsafe`.
Leaving the iterator early (a client that disconnects, a timeout) aborts the request and frees
its KV blocks. If the loop or a tensor-parallel rank dies, every open request gets
`EngineDeadError` and `check_health` raises, so the replica is replaced: an accepted request
always ends with a result or an error. A request whose own processing failed gets
`RequestFailedError`; the loop goes on serving the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from inference.engine.llm_engine import EngineStats, LLMEngine, PeersFactory
from inference.parallel.multiproc import MultiprocPeers
from inference.schema.config.engine import EngineConfig
from inference.schema.errors import EngineDeadError, InvalidRequestError, RequestFailedError
from inference.schema.outputs import RequestOutput
from inference.schema.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]


class AsyncLLMEngine:
    def __init__(self, config: EngineConfig, peers_factory: PeersFactory = MultiprocPeers) -> None:
        self.engine = LLMEngine(config, peers_factory)
        self.tokenizer = self.engine.tokenizer
        self.info = self.engine.info  # what the model loaded as (dtype and why, vocabulary, ...)
        self._lock = threading.Lock()
        self._new: list[tuple[str, list[int], SamplingParams, float]] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._dead: BaseException | None = None
        self._ids = itertools.count()
        self.last_stats: EngineStats = self.engine.stats()
        self._thread = threading.Thread(target=self._run, name="sloserve-engine", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch_ranks, name="sloserve-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def device(self) -> str:
        """The torch device rank 0 computes on."""
        return str(self.engine.worker.device)

    # ---- caller side (any thread / event loop) -----------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """A text prompt's token ids. CPU-heavy for a long text: off the event loop, then."""
        return self.engine.encode(prompt)

    @property
    def renders_tools(self) -> bool:
        """Whether the model's chat template renders `tools` (else the caller describes them in the messages)."""
        return "tools" in str(getattr(self.tokenizer, "chat_template", None) or "")

    def encode_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """A chat's token ids, with the generation prompt: the model's chat template renders straight
        to ids (`tools` only where `renders_tools`)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequestError("the model has no chat template; use /v1/completions", "messages")
        tokenizer: Any = self.tokenizer
        return list(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Outputs after every step that advanced the request; the last one has `finished=True`."""
        if self._dead is not None:
            raise EngineDeadError(f"engine is dead: {self._dead}")
        request_id = request_id or f"async-{next(self._ids)}"
        if params.guided is not None:  # compile (or find cached) off both the event loop and the engine loop
            await asyncio.to_thread(self.engine.structured.compile, params.guided)
        self.engine.check_request(prompt_ids, params)  # typed error now, before anything is queued
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already running")
            self._streams[request_id] = stream
            self._new.append((request_id, prompt_ids, params, time.monotonic()))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)
            self._streams.pop(request_id, None)
        self._wake.set()

    def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"engine loop died: {self._dead!r}")
        if not self._thread.is_alive():
            raise EngineDeadError("engine loop thread is not running")
        dead = self.engine.dead_ranks()
        if dead:
            raise EngineDeadError(f"tensor-parallel ranks {dead} are dead")

    def stats(self) -> EngineStats:
        return self.last_stats

    @property
    def num_open_requests(self) -> int:
        return len(self._streams)

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)
        self._fail_all(EngineDeadError("engine shut down"))
        self.engine.shutdown()

    # ---- loop thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stopping:
                if not engine.has_unfinished() and not self._new and not self._aborts:
                    self._wake.wait(timeout=0.5)
                    engine.keepalive_if_idle()  # an idle tensor-parallel group outlives its collective timeout
                self._wake.clear()
                self._drain()
                if engine.has_unfinished():
                    outputs = engine.step()
                    self.last_stats = engine.stats()
                    for out in outputs:
                        if out.error is not None:
                            self._deliver(out.request_id, RequestFailedError(f"request {out.request_id} failed: {out.error}"))
                        else:
                            self._deliver(out.request_id, out)
        except BaseException as e:  # any loop failure kills the engine, loudly
            log.exception("engine loop died")
            self._dead = e
            self._fail_all(EngineDeadError(f"engine loop died: {e!r}"))

    def _drain(self) -> None:
        with self._lock:
            new, self._new = self._new, []
            aborts, self._aborts = self._aborts, []
        for request_id in aborts:
            self.engine.abort(request_id)
        for request_id, prompt_ids, params, arrival in new:
            if request_id in aborts:
                continue
            try:
                self.engine.add_request(prompt_ids, params, request_id=request_id, arrival_s=arrival)
            except Exception as e:  # the request's own error goes to its caller
                self._deliver(request_id, e)
        self.last_stats = self.engine.stats()

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
            if stream is not None and (isinstance(item, BaseException) or item.finished):
                del self._streams[request_id]
        if stream is not None:
            _put(stream, item)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            streams, self._streams = self._streams, {}
        for stream in streams.values():
            _put(stream, error)

    def _watch_ranks(self) -> None:
        """A dead peer rank can leave rank 0 blocked inside an all-reduce: fail requests from here."""
        while not self._stopping and self._dead is None:
            time.sleep(0.5)
            dead = self.engine.dead_ranks()
            if dead:
                self._dead = EngineDeadError(f"tensor-parallel ranks {dead} died")
                self._fail_all(self._dead)
                return


def _put(stream: _Stream, item: RequestOutput | BaseException) -> None:
    # RuntimeError: the caller's event loop is closed, nobody is listening any more
    with contextlib.suppress(RuntimeError):
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
