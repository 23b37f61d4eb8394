"""Print the runtime dependencies of a pyproject.toml, and those of the extras named after it,
one per line, for `pip install -r`:  requirements-from-pyproject.py pyproject.toml [EXTRA ...]

The images install these before copying the source, so a code change does not re-install them.
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
extras = project.get("optional-dependencies", {})
print("\n".join([*project["dependencies"], *(d for name in sys.argv[2:] for d in extras[name])]))
