"""``python -m orientlearn.core.commands ...``: the ``orientlearn`` command line."""
import sys

from . import main

sys.exit(main())
