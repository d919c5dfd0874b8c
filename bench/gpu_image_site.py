"""A folder that stands for the GPU machine's image on this machine: links to this
environment's copies of the image's packages (a list of distribution names) and of nothing
else. With `python -S` and this folder on PYTHONPATH, an import of anything the image lacks
fails here, as it would there (bench/gpu.sh gather).

    python bench/gpu_image_site.py bench/gpu_image_packages.txt /tmp/image-site [NAME ...]

NAMEs: linked too; for what this environment's newer versions of the image's packages need
and the image's own versions do not (transformers 5.24 here, 5.17 there).
"""

from __future__ import annotations

import re
import shutil
import sys
from importlib.metadata import distributions
from pathlib import Path


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build(names_file: Path, dest: Path, also: list[str]) -> tuple[list[str], list[str]]:
    """Link each listed distribution's top-level entries and its metadata folder into `dest`;
    return (linked, listed but not installed here)."""
    wanted = {_norm(line.strip()) for line in names_file.read_text().splitlines()
              if line.strip() and not line.startswith("#")} | {_norm(n) for n in also}  # fmt: skip
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    linked = []
    for dist in distributions():
        name = _norm(dist.metadata["Name"] or "")
        if name not in wanted or name in linked:
            continue
        root = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops):
            src = root / top
            if top.startswith("..") or top == "__pycache__" or not src.exists():
                continue  # scripts outside site-packages, caches
            target = dest / top
            if not target.exists():
                target.symlink_to(src)
        linked.append(name)
    return sorted(linked), sorted(wanted - set(linked))


def main() -> int:
    linked, absent = build(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
    print(f"image site {sys.argv[2]}: {len(linked)} of the image's distributions linked "
          f"from {sys.prefix}; not installed here (so not checked): "
          f"{', '.join(absent)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
