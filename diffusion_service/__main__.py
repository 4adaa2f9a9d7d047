"""``python -m diffusion_service``: see :mod:`diffusion_service.cli`."""

from .cli import main

raise SystemExit(main())
