"""How the command line runs: quiet by default and stoppable with Ctrl-C within seconds.

- Prefect's server telemetry is off unless the user switched it on (offline it prints an ERROR
  line per command), set here before Prefect is imported.
- Logging: our packages (`flows`, `eval`, `nexus_gen`) at INFO; everything else, Prefect's
  per-run "Finished in state Completed()" lines and libraries logging on the root logger
  (open_clip) included, at WARNING unless `--verbose`.
- Flows run in-process on Prefect's ephemeral server, a subprocess in our process group: a
  terminal's Ctrl-C reached it too, it went down first, and the interrupted run then spent
  minutes retrying to report its state to it. `run_flow` starts that server with SIGINT blocked
  (a blocked signal stays blocked across exec, so the server never sees the terminal's Ctrl-C),
  then runs the flow: a Ctrl-C reaches only this process, Prefect records the runs as crashed on
  the live server, and the command exits with one line; the server is stopped at exit (SIGTERM).
  Steps write their outputs atomically, so what is finished is kept and a rerun resumes.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, Callable, TypeVar

import typer

ENV_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The first start creates and migrates the server's database: on a busy machine that takes
    # longer than Prefect's default 20 s, which then fails the command.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
OUR_LOGGERS = ("flows", "eval", "nexus_gen")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for a Ctrl-C

T = TypeVar("T")


def set_env_defaults() -> None:
    """Environment defaults for Prefect (effective only before `import prefect`; the user's own
    settings win)."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def configure_logging(verbose: bool = False) -> None:
    """Our packages log at INFO; the rest (Prefect's run loggers, libraries) at WARNING unless
    `verbose`. Idempotent."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT)
    for handler in root.handlers:
        # A console handler keeps the stderr it was made with (Prefect's, made when prefect is
        # first imported); when that stream has since been closed (a command run in-process by a
        # test runner or a notebook), point it at today's stderr instead of failing every record.
        if not isinstance(handler, logging.StreamHandler):
            continue
        console = getattr(handler, "console", None)  # Prefect's handler prints through a rich Console
        with handler.lock:  # not setStream(): it flushes the closed stream first
            if getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr
            if console is not None and getattr(getattr(console, "file", None), "closed", False):
                console.file = sys.stderr
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    if not verbose:
        # Read by Prefect's logging set-up when it is imported; set directly if it already was.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        if "prefect" in sys.modules:
            logging.getLogger("prefect").setLevel(logging.WARNING)


def fail(problem: object) -> None:
    """End the command with one line naming the input and the problem (exit code 2, as for a
    bad option), no traceback."""
    typer.echo(f"error: {problem}", err=True)
    raise typer.Exit(code=2)


def start_prefect_server() -> None:
    """Start Prefect's ephemeral API server (the one its client would start on first use) with
    SIGINT blocked, so the terminal's Ctrl-C does not reach it. No-op when a server is
    configured (PREFECT_API_URL) or ephemeral servers are off."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        SubprocessASGIServer().start()  # a per-process singleton: the client reuses it
    except RuntimeError as e:  # Prefect's "Timed out while attempting to connect ..."
        typer.echo(f"error: Prefect's local server did not start ({e}); run the command again, "
                   f"or point PREFECT_API_URL at a running Prefect server", err=True)
        raise typer.Exit(1) from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a Ctrl-C meanwhile arrives now


def run_flow(call: Callable[..., T], *args: Any, resume_hint: str, **kwargs: Any) -> T:
    """Run a Prefect flow call in-process; Ctrl-C ends the command within seconds with one line
    (`resume_hint` says what to run to go on) and exit code 130."""
    try:
        start_prefect_server()
        return call(*args, **kwargs)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: finished work is kept; {resume_hint}", err=True)
        raise typer.Exit(INTERRUPTED_EXIT) from None


def wait_units(futures: list[Any], total: int, what: str, desc: str, progress: bool,
               logger: logging.Logger) -> Any:
    """Wait for every unit's future (shards, embedding units) as they finish, with a progress bar
    over `total` units (the ones already done count as done); a failed unit is logged and the
    others go on. Returns the first error, or None. No bar when nothing is left to do."""
    from prefect.futures import as_completed

    bar = None
    if progress and futures:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=total - len(futures), unit=what, desc=desc)
    error = None
    try:
        for fut in as_completed(futures):
            try:
                fut.result()
            except Exception as exc:  # the others go on; the run fails at the end
                error = error or exc
                logger.error("%s failed: %s", what, exc)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return error
