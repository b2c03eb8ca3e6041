"""`python -m cgraph` is the `cgraph` command."""

import sys

from cgraph.cli import main

sys.exit(main())
