"""``python -m vmstats``: same as the ``vmstats`` command."""

import sys

from vmstats.cli.main import main

sys.exit(main())
