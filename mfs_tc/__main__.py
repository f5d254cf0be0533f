"""`python -m mfs_tc ...` is `mfs-tc ...`."""

import sys

from .cli import main

sys.exit(main())
