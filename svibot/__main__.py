"""`python -m svibot` runs the `svibot` command."""
import sys

from svibot.cli import main

sys.exit(main())
