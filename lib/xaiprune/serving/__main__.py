"""``python -m xaiprune.serving``: one process of a distributed run (see :mod:`xaiprune.serving.launcher`)."""

import sys

from xaiprune.serving.launcher import main

sys.exit(main())
