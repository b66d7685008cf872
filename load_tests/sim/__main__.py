"""`python -m load_tests.sim ...`: see load_tests/sim/cli.py."""

import sys

from load_tests.sim.cli import main

sys.exit(main())
