"""One-shot `models` job of docker-compose.yml: build the default models into the model
repository volume when it is empty, and leave a repository that holds anything alone (the
operator may have put their own models there).

Usage: build_models.py REPOSITORY
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    root = Path(argv[1])
    if root.is_dir() and any(root.iterdir()):
        print(f"{root} is not empty: keeping the models there")
        return 0
    from rnnserve.export.build import build_repository  # torch: only once there is work to do

    print(f"building the default models into {root}")
    build_repository(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
