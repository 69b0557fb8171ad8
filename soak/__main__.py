"""``python -m soak``: see soak/__init__.py."""

import sys

from .run import main

sys.exit(main())
