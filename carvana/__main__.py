"""``python -m carvana COMMAND ...``: the ``carvana`` console command without an installed script."""

import sys

from carvana.cli import main

sys.exit(main())
