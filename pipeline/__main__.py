"""Allow ``python -m pipeline`` as an alias of the ``micromet`` command."""

from __future__ import annotations

import sys

from pipeline.cli import main

sys.exit(main())
