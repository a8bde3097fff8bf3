"""python -m gilfree: the same as python -m gilfree.bench."""

import sys

from .bench import main

sys.exit(main())
