"""`python -m hsae.cli …` is `hsae …`."""

import sys

from hsae.cli import main

sys.exit(main())
