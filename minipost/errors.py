"""
How a script ends when something is wrong: one line for a mistake the user can fix, a traceback for a bug.

A wrong flag, a missing or corrupt file, a checkpoint that does not fit, a loss that turned NaN: the user
needs to know WHAT is wrong (the flag, the file, the line, the field) and nothing else, so these print
`error: <message>` on stderr and exit with status 1. Every other exception is a bug in minipost (or in
code a student changed) and keeps its full traceback, because that is what the person fixing it needs.

Ctrl-C stops a run with one line that says where the last checkpoint is, so nobody has to wonder
whether an hour of training was kept.

Every script ends with:

    if __name__ == "__main__":
        errors.run(main)
"""

import sys

from minipost import checkpoint as ckpt
from minipost.data import DataError


class UserError(Exception):
    """A mistake in the command line or the input that the user can fix; its message names the flag or file."""


# Exceptions whose message is the whole story. FloatingPointError comes from common.check_finite (a loss
# turned NaN/inf: the message names the step; the last checkpoint is intact).
USER_ERRORS = (UserError, ckpt.CheckpointError, DataError, FloatingPointError)


def interrupted_message() -> str:
    saved = ckpt.last_save()
    if saved.get("step") is not None:
        return (f"interrupted: the last checkpoint is {saved['out_dir']} (step {saved['step']}, saved by this run); "
                "continue it with --resume")
    if saved.get("out_dir"):
        where = saved["out_dir"]
        state = "holds the checkpoint it had before this run" if ckpt.has_checkpoint(where) else "holds no checkpoint"
        return f"interrupted before this run saved anything: {where} {state}"
    return "interrupted"


def run(main, argv=None):
    """Call main(argv); user errors and Ctrl-C end in one line on stderr (exit 1, or 130 for Ctrl-C)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"\n{interrupted_message()}", file=sys.stderr)
        sys.exit(130)  # the shell's code for "stopped by SIGINT"
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
