"""`python -m streams.cli`: the `mmcl` command."""

import sys

from streams.cli.main import main

sys.exit(main())
