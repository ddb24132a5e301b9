"""The `pooltagscan` command: a thin shell that parses options and dispatches.

Each subcommand lives in `pooltagscan.commands.<name>` with `add_parser(sub)`, an
`inputs(args)` listing the files it will read, and the function it sets as
`func(args, outputs) -> exit code`. This module owns how a run ends, whatever happens:

- errors caused by input or output become one line on stderr and exit code 2; nothing
  the user does should produce a traceback (POOLTAGSCAN_DEBUG=1 shows one for
  internal errors);
- outputs are refused when they are an input, written beside their target and put in
  place only when the run succeeded (see `pooltagscan.outputs`);
- Ctrl-C (or SIGTERM) ends the run at once with exit code 130 (143), no traceback, no
  worker left behind, outputs untouched; a closed pipe ends it with exit code 0.

Only the standard library is imported at module level, so even a Ctrl-C during start-up
(while numpy and the rest load) is handled.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from pooltagscan import interrupts

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


class Terminated(BaseException):
    """SIGTERM, turned into an exception so the run cleans up as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _error(text: str) -> None:
    from pooltagscan.errors import one_line

    try:
        print(f"pooltagscan: error: {one_line(text)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr closed: nothing left to tell


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered must not fail again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def build_parser():
    import argparse

    from pooltagscan import __version__
    from pooltagscan.commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="pooltagscan",
        description="Find Windows kernel pool allocations in memory dumps without symbols, "
        "and attribute pool tags to drivers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    handlers = {}
    try:
        for signum, handler in ((signal.SIGTERM, _on_sigterm),):
            if signal.getsignal(signum) == signal.SIG_DFL:
                handlers[signum] = signal.signal(signum, handler)
    except (ValueError, OSError):
        pass  # not the main thread (a caller embedding us): default handling stays
    try:
        with interrupts.catching():
            return _main(argv)
    finally:
        for signum, previous in handlers.items():
            signal.signal(signum, previous)


def _main(argv: Sequence[str] | None) -> int:
    outputs = None
    try:
        from pooltagscan.commands.common import UsageError
        from pooltagscan.errors import InputError, OutputError
        from pooltagscan.outputs import STDOUT, Outputs

        args = build_parser().parse_args(argv)
        try:
            outputs = Outputs(
                (option, path)
                for option, path in (("-o", getattr(args, "output", None)),
                                     ("--html", getattr(args, "html", None)))
                if path
            )  # fmt: skip
            for what, path in args.inputs(args):
                outputs.check_inputs([path], what)
            status = args.func(args, outputs)
            interrupts.check()  # a Ctrl-C that a finalizer swallowed is still one
            if status == EXIT_OK or outputs.keep:
                outputs.commit()
            else:
                outputs.discard()
            return status
        except (InputError, UsageError, OutputError) as exc:
            if outputs is not None:
                outputs.discard()
            if isinstance(exc, OutputError) and exc.target == STDOUT:
                _silence_stdout()
            _error(str(exc))
            return EXIT_INPUT
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error. Keep Python from complaining
        # again when it flushes stdout at exit.
        if outputs is not None:
            outputs.discard()
        _silence_stdout()
        return EXIT_OK
    except (KeyboardInterrupt, Terminated) as exc:
        with _sigint_ignored():  # a second Ctrl-C changes nothing now
            if outputs is not None:
                outputs.discard()
            _error("interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated")
        return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
    except SystemExit:
        raise  # argparse: --help, --version, usage errors
    except Exception as exc:
        if outputs is not None:
            outputs.discard()
        if os.environ.get("POOLTAGSCAN_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set POOLTAGSCAN_DEBUG=1 for details)")
        return EXIT_INTERNAL


class _sigint_ignored:
    def __enter__(self) -> None:
        try:
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except (ValueError, OSError):
            self.previous = None

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


if __name__ == "__main__":
    sys.exit(main())
