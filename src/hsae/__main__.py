"""`python -m hsae …` is `hsae …` (also what `accelerate launch -m hsae …` runs)."""

import sys

from hsae.cli import main

sys.exit(main())
