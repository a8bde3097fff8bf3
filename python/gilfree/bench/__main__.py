"""python -m gilfree.bench"""

import sys

from .cli import main

sys.exit(main())
