"""Run a Python program with the soakd agent served over a unix socket.

Usage::

    python -m soakd.agent [--socket PATH] [--frames N] [--trace] script.py [ARGS ...]
    python -m soakd.agent [--socket PATH] [--frames N] [--trace] -m module [ARGS ...]

The socket is PATH, else ``$SOAKD_AGENT_SOCKET``, else ``soakd-agent-<pid>-<random>.sock`` in
this user's private directory (``$XDG_RUNTIME_DIR/soakd`` or ``/tmp/soakd-<uid>``); it is
removed when the program ends, also on SIGTERM (unless the program installs its own handler).
``--trace`` starts tracemalloc before the program runs, so its import-time allocations count.
When the agent cannot be served (the socket's place is unsafe or taken), the program runs
without it after a warning on stderr: watching must never stop the app.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from soakd.agent.env import ENV_DISABLED
from soakd.agent.server import serve

_USAGE = (
    "usage: python -m soakd.agent [--socket PATH] [--frames N] [--trace]"
    " (script.py | -m module) [ARGS ...]"
)


def _usage(message: str) -> int:
    print(f"{_USAGE}\nsoakd.agent: error: {message}", file=sys.stderr)
    return 2


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through finally: the socket gets removed


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    socket_path: str | None = None
    frames = 8
    trace = False
    while args and args[0].startswith("-") and args[0] != "-m":
        option = args.pop(0)
        if option in ("-h", "--help"):
            print(__doc__)
            return 0
        if option == "--trace":
            trace = True
        elif option in ("--socket", "--frames") and args:
            value = args.pop(0)
            if option == "--socket":
                socket_path = value
            elif value.isdigit() and 1 <= int(value) <= 1000:
                frames = int(value)
            else:
                return _usage(f"--frames must be an integer between 1 and 1000: {value!r}")
        else:
            return _usage(f"unknown option or missing value: {option}")
    module: str | None = None
    if args and args[0] == "-m":
        if len(args) < 2:
            return _usage("-m needs a module name")
        module = args[1]
        program_args = args[2:]
    elif args:
        script = args[0]
        program_args = args[1:]
        if not os.path.isfile(script):
            return _usage(f"no such script: {script}")
    else:
        return _usage("give a script or -m module to run")
    os.environ.pop(ENV_DISABLED, None)  # asked for explicitly
    server = serve(socket_path, frames=frames, trace=trace)  # None, with a warning, if it cannot
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if module is not None:
            sys.argv = [module, *program_args]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [script, *program_args]
            sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
            runpy.run_path(script, run_name="__main__")
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
