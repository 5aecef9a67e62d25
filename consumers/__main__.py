"""``python -m consumers`` is ``cityingest consume``: the one entry path that compose and k8s run."""

import sys

from cli.main import main

sys.exit(main(["consume", *sys.argv[1:]]))
