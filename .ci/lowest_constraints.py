"""Print pip constraints that pin every runtime dependency in pyproject.toml to its lower bound.

`make test-lowest` installs with them, so CI checks that the lower bounds really work (torch is
left out: it is installed first, by its own spec). Runs on Python 3.10, so no tomllib.
"""
import re
import sys
from pathlib import Path

text = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml").read_text()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)[1]
for name, low in re.findall(r'^\s*"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?[^"]*?>=\s*([0-9][^",;\s]*)', block, re.M):
    if name != "torch":
        print(f"{name}=={low}")
