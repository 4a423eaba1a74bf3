"""``python -m rewardsft`` = the ``rewardsft`` command (for environments whose scripts folder is not on PATH)."""

import sys

from rewardsft.cli import main

sys.exit(main())
