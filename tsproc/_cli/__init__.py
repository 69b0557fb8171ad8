"""The ``tsproc`` command line (``python -m tsproc``): ``main`` parses and runs the commands,
``start`` starts a node for them (progress line, health text, login URL), ``demo`` is
``tsproc demo``. Built on the public node and ``tsproc.testing``; nothing imports it but
``__main__``.
"""

from .main import main

__all__ = ["main"]
