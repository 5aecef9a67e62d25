"""``python -m ingest`` is ``cityingest bridge``: one entry path, the command compose and Kubernetes run."""

import sys

from cli.main import main

sys.exit(main(["bridge", *sys.argv[1:]]))
