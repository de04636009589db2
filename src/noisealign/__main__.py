"""`python -m noisealign`: the same command line as `noisealign`."""

import sys

from .cli import main

sys.exit(main())
