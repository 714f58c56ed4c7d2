"""``python -m pytest_dbbranch.emulator``: serve an emulator until Ctrl-C."""

import sys

from .command_line import main

if __name__ == "__main__":
    sys.exit(main())
