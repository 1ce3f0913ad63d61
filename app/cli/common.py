"""Pieces every `scones` subcommand shares: the common options, tables, progress.

Each command module has `register(subparsers)`; every leaf parser it adds takes
`parents=[common_options()]` and sets `func=handler`, where
`handler(args, config) -> int` (the exit code). app/cli/main.py loads the config once
and turns SconesError/ConfigError into one `error: ...` line.
"""
from __future__ import annotations

import argparse
import logging


def configure_logging() -> None:
    """WARNING and up, on stderr. Installing the root handler first also turns the SDKs'
    own logging.basicConfig(level=INFO) calls (sagemaker does one on a lazy import) into
    no-ops, so their INFO lines stay out of our output."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def common_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("configuration")
    group.add_argument("--env", choices=("local", "aws"), default="local",
                       help="configuration environment: configs/base.yaml + configs/ENV.yaml "
                            "(default: local, the embedded default)")
    group.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="extra YAML overlay, applied after the environment's")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       dest="overrides",
                       help="override one setting, e.g. --set training.epochs=5 (YAML value)")
    return parser


def command_group(subparsers, name: str, help: str):
    """The sub-subparsers of group `name` (`scones NAME ...`), created on first use, so
    several modules can add commands to one group."""
    cache = subparsers.__dict__.setdefault("_scones_groups", {})
    if name not in cache:
        parser = subparsers.add_parser(name, help=help, description=help)
        cache[name] = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND",
                                            required=True)
    return cache[name]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: handled like Ctrl-C (every `finally` runs, so
    e.g. `endpoint serve` removes its extracted model), then exit 143. Like the local
    runner's ExecutionStopped, it carries the signal's number."""

    signal_number = 15  # signal.SIGTERM


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def install_stop_handlers():
    """Install the SIGTERM handler, and Python's Ctrl-C handler where SIGINT came in ignored
    (main thread only); the two handlers replaced, or None.

    A process started with SIGINT ignored (a shell script's `cmd &`, a pytest-xdist worker's
    children) inherits that, and Python then installs no KeyboardInterrupt handler: Ctrl-C,
    the documented way to stop `scones endpoint serve` or `scones ui`, did nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous_sigint = signal.getsignal(signal.SIGINT)
    if previous_sigint is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return signal.signal(signal.SIGTERM, _raise_terminated), previous_sigint


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: which path, what happened, what to do."""
    import errno

    path = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    what = exc.strerror or str(exc) or type(exc).__name__
    advice = {
        errno.ENOSPC: "free some disk space and try again",
        errno.EDQUOT: "free some space within your quota and try again",
        errno.EACCES: "check the permissions of that path (or choose another with --set "
                      "local.workspace=DIR / --out)",
        errno.EPERM: "check the permissions of that path",
        errno.EROFS: "the file system is read-only: choose a writable location",
        errno.EEXIST: "it already exists: choose a new path or remove it first",
        errno.ENOTDIR: "a part of that path is a file, not a folder",
        errno.EISDIR: "that path is a folder, not a file",
        errno.EMFILE: "too many open files: raise `ulimit -n`",
    }.get(exc.errno)
    return f"{path + ': ' if path else ''}{what}" + (f" ({advice})" if advice else "")


def _silence_stdout() -> None:
    """After EPIPE (`scones registry list | head -1`): point stdout at /dev/null so the
    interpreter's final flush does not complain, as other command-line tools stay quiet."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_guarded(call, config=None) -> int:
    """Run a command body and turn every failure a user can cause into one `error: ...`
    line on stderr and an exit code - never a traceback: SconesError (2), AWS failures
    (botocore, translated by scones.aws_errors; 2), OSError such as a full disk (1), Ctrl-C
    (130), SIGTERM (143), a closed stdout pipe (141, silently). Anything else is a bug: one
    line saying so (70); SCONES_DEBUG=1 shows its traceback.

    config: the loaded Config, if any, so AWS messages can name the region and role."""
    import signal
    import sys

    def error(message: str, code: int) -> int:
        try:
            print(f"error: {message}", file=sys.stderr, flush=True)
        except OSError:
            pass
        return code

    previous = install_stop_handlers()
    try:
        return _run(call, config, error)
    finally:
        if previous is not None:  # main() called in-process (tests): put them back
            for signal_number, handler in zip((signal.SIGTERM, signal.SIGINT), previous):
                if handler is not None:  # None: set outside Python, nothing to put back
                    signal.signal(signal_number, handler)


def _run(call, config, error) -> int:
    import os
    import sys

    from scones.aws_errors import translate
    from scones.errors import SconesError

    try:
        return int(call() or 0)
    except SconesError as exc:
        return error(str(exc), 2)
    except KeyboardInterrupt as exc:
        # Ctrl-C (2) or SIGTERM (15), also as the local runner's ExecutionStopped, whose
        # message says which execution was recorded Stopped and how to retry it.
        number = getattr(exc, "signal_number", 2)
        print(str(exc) or ("terminated" if number == 15 else "interrupted"), file=sys.stderr)
        return 128 + int(number)
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except Exception as exc:
        aws = config.aws if config is not None else None
        translated = translate(exc, region=getattr(aws, "region", None),
                               role_arn=getattr(aws, "role_arn", None),
                               bucket=getattr(aws, "bucket", None))
        if translated is not None:
            return error(str(translated), 2)
        if isinstance(exc, OSError):
            return error(describe_os_error(exc), 1)
        if os.environ.get("SCONES_DEBUG"):
            raise
        where = ""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
        return error(f"unexpected {type(exc).__name__}{where}: {exc} - a bug in scones; "
                     "rerun with SCONES_DEBUG=1 for the traceback and report it", 70)
