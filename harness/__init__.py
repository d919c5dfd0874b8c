"""Development harness shared by the tests, benchmarks and scripts (not shipped in the wheel).

`scripts/setup.sh` puts the repository root on the venv's path, so `import harness` works
from any of them.
"""
