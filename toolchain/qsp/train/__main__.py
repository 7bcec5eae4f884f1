"""``python -m qsp.train`` == ``qsp-train``."""
import sys

from .cli import main

sys.exit(main())
