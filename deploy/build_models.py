"""One-shot `models` job of docker-compose.yml: build the default models into the model
repository volume when it is empty, and leave a repository that holds anything alone (the
operator may have put their own models there).

Usage: build_models.py REPOSITORY. RNNSERVE_BUILD_PRESET picks the training preset (`default`;
`tiny` trains in seconds, for tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    root = Path(argv[1])
    if root.is_dir() and any(root.iterdir()):
        print(f"{root} is not empty: keeping the models there")
        return 0
    preset = os.environ.get("RNNSERVE_BUILD_PRESET", "default")
    print(f"building the default models ({preset} preset) into {root}")
    # Checkpoints and plots are of no use in the image: they go to a folder removed after.
    with tempfile.TemporaryDirectory() as runs:
        command = ["rnnserve", "build", "--out", str(root), "--preset", preset, "--runs", runs]
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
