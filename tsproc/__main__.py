"""``python -m tsproc``: the command line (see :mod:`tsproc._cli`)."""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
