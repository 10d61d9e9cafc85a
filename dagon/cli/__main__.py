"""``python -m dagon.cli`` runs ``dagon``."""

import sys

from dagon.cli import main

sys.exit(main())
