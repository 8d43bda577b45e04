"""`python -m model.serve serve | stop | status`: see cli.py."""
from .cli import main

raise SystemExit(main())
