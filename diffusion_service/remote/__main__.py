"""``python -m diffusion_service.remote``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
