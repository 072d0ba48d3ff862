"""``python -m carvana.data check ROOT``: the ``carvana data`` command without an installed script."""

import sys

from carvana.data.check import main

sys.exit(main())
