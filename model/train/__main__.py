"""`python -m model.train`: the same as `latent train`."""
import sys

from model.train.cli import main

sys.exit(main())
