"""What the app prints: logging set up once, every record and every traceback redacted.

Secrets come from the environment (`storage.redact.secrets_from_env`); Python's own traceback
printing (an uncaught exception, a failed thread, an "Exception ignored in") goes through the same
redaction, so a library that puts a token into an exception message cannot leak it to stderr.
"""
from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Mapping
from types import TracebackType

from storage.redact import add_secret, install_log_redaction, quiet_noisy_loggers, redact, secrets_from_env

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def print_exception(exc_type: type[BaseException], exc: BaseException | None, tb: TracebackType | None,
                    *, header: str = "") -> None:
    """Print a traceback to stderr the way Python does, with every secret taken out."""
    text = header + "".join(traceback.format_exception(exc_type, exc, tb))
    print(redact(text), end="" if text.endswith("\n") else "\n", file=sys.stderr, flush=True)


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    print_exception(args.exc_type, args.exc_value, args.exc_traceback, header=f"Exception in thread {name}:\n")


def _unraisable_hook(unraisable: "sys.UnraisableHookArgs") -> None:
    where = unraisable.err_msg or "Exception ignored in"
    header = f"{where}: {unraisable.object!r}\n" if unraisable.object is not None else f"{where}:\n"
    print_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback, header=header)


def setup(level: str, env: Mapping[str, str]) -> None:
    """Register the environment's secrets, redact all output, and quiet libraries that log URLs."""
    for secret in secrets_from_env(env):
        add_secret(secret)
    install_log_redaction()
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=LOG_FORMAT)
    quiet_noisy_loggers(level.upper())
    logging.captureWarnings(True)  # warnings go through the (redacted) log too
    sys.excepthook = print_exception
    threading.excepthook = _thread_hook
    sys.unraisablehook = _unraisable_hook
