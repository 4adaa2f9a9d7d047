"""``python -m diffusion_service.pretrain``: see :mod:`diffusion_service.pretrain.cli`."""

from .cli import main

raise SystemExit(main())
