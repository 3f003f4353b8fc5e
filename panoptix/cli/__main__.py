"""``python -m panoptix.cli`` (what ``torchrun -m panoptix.cli`` runs)."""

import sys

from panoptix.cli import main

sys.exit(main())
