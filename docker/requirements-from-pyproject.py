"""Print the runtime dependencies of a pyproject.toml, one per line, for `pip install -r`.

The images install these before copying the source, so a code change does not re-install them.
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
