"""How failures end a process: UserError for bad input (the CLI prints its message as one line and exits 2), and
a quiet end for scripts whose reader went away."""
from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """Something the user must fix (a key, a file, a folder); the message says what and how."""


def exit_quietly_on_closed_pipe(main_fn: Callable[[], int]) -> None:
    """sys.exit(main_fn()), but a reader that closed stdout (`| head -1`) ends the script as SIGPIPE would
    end a shell tool: no traceback, exit status 141 (128 + SIGPIPE), nothing more launched."""
    try:
        code = main_fn()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush is quiet
        code = 141
    sys.exit(code)
