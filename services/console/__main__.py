"""`python -m services.console [--port P]`: the same as `genstack console`."""

import sys

from shared.cli import main

sys.exit(main(["console", *sys.argv[1:]]))
