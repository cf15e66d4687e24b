"""`python -m lrcore [command]`: the same commands as the `lrcore` console script."""
import sys

from .cli import main

sys.exit(main())
