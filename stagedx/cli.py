"""The ``stagedx`` command line. Each stage registers its own commands from its ``cli``
module; those modules import their heavy dependencies inside the commands, so ``stagedx
--help`` and the runtime commands never import torch."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

import click

from . import __version__
from .errors import StagedxError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stagedx")
def cli() -> None:
    """Staged speculative decoding: export, build engines, generate, benchmark.

    Add --debug anywhere to see the full traceback of an error.
    """


def _register() -> None:
    from .bench import cli as bench_cli
    from .engines import cli as engines_cli
    from .export import cli as export_cli
    from .runtime import cli as runtime_cli
    from .serve import cli as serve_cli

    for module in (export_cli, engines_cli, runtime_cli, bench_cli, serve_cli):
        for command in module.COMMANDS:
            cli.add_command(command)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every ``finally`` / ``AtomicFolder`` cleans up."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _interrupted(exc: BaseException) -> None:
    terminated = isinstance(exc, Terminated) or isinstance(exc.__context__, Terminated)
    click.echo("terminated" if terminated else "interrupted", err=True)
    sys.exit(143 if terminated else 130)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("STAGEDX_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    _register()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _run(argv, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str], debug: bool) -> None:
    try:
        cli.main(args=argv, prog_name="stagedx", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click wraps KeyboardInterrupt and EOFError in Abort
        if isinstance(exc.__context__, EOFError):
            _unexpected(exc.__context__, debug)
        if isinstance(exc.__context__, KeyboardInterrupt):
            _interrupted(exc.__context__)
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(2)
    except StagedxError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:  # noqa: BLE001 - the CLI must never dump a traceback by default
        _unexpected(exc, debug)


def _unexpected(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    text = " ".join(str(exc).split())[:300]
    click.echo(f"error: {type(exc).__name__}: {text} (run with --debug for the traceback)", err=True)
    sys.exit(1)
