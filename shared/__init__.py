"""genstack's common library: config, logging, errors, transports, model loading."""

import sys
from pathlib import Path

# Generated stubs live in the git-ignored gen/ folder (`make protos`); make them importable
# as `genstack.*` whether or not the virtualenv's .pth file is present.
_GEN = Path(__file__).resolve().parent.parent / "gen"
if _GEN.is_dir() and str(_GEN) not in sys.path:
    sys.path.insert(0, str(_GEN))
