"""``python -m semaim`` == ``semaim``."""

import sys

from .cli import main

sys.exit(main())
