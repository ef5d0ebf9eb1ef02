"""``python -m ciss_autoimpute`` runs the command line."""

from .cli import main

raise SystemExit(main())
