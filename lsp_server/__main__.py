"""`python -m lsp_server …` is the `latent` command."""
from lsp_server.cli import main

raise SystemExit(main())
