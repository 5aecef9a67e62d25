"""``python -m cli`` is the ``cityingest`` command."""

import sys

from cli.main import main

sys.exit(main())
