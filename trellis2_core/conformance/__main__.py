"""``python -m trellis2_core.conformance DIR [--only NAME ...] [--aux]``."""
from __future__ import annotations

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
