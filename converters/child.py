"""Entry point of the converter's child processes (nothing imports this module).

``python -m nanofmt.converters.child skeleton FOLDER`` prints the model skeleton as JSON;
``python -m nanofmt.converters.child encode`` serves encoding tasks on stdin/stdout. A module
of its own, so ``-m`` never runs a module the package has already imported.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["skeleton"]:
        from nanofmt.converters.skeleton import main

        sys.exit(main(sys.argv[2:]))
    if sys.argv[1:2] == ["encode"]:
        from nanofmt.converters.workers import serve

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        serve(sys.stdin.buffer, sys.stdout.buffer)
        sys.exit(0)
    sys.exit(f"usage: python -m {__spec__.name if __spec__ else 'child'} skeleton FOLDER | encode")
