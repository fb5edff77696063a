"""The architecture document names only files and folders that exist: a path there is from
the repository root (`scripts/test.sh`, `service/pyproject.toml`) or, for a module, from
`rnnserve/`, as its import name reads (`service/dataplane/plane.py`, which lives in
`service/src/rnnserve/service/dataplane/plane.py`). A move that leaves the map behind
fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "architecture.md"
# Where a path may start: the root, and the `rnnserve/` folder of every part.
BASES = [ROOT, *sorted(ROOT.glob("*/src/rnnserve")), ROOT / "src" / "rnnserve"]
# A span in backticks that is a relative path: names joined by slashes, a folder ending in
# one; not a URL, an absolute path, a key pattern, nor a placeholder such as <name>.
PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*/?")
# Outside backticks: a file of the kinds the repository holds, named by its folders.
BARE = re.compile(r"(?<![\w`/.:+-])[\w.-]+(?:/[\w.-]+)+\.(?:py|toml|proto|sh|md|yml|js|lock)\b")


def named_paths(text: str) -> set[str]:
    spans = re.findall(r"`([^`\n]+)`", text)
    quoted = {span for span in spans if "/" in span and PATH.fullmatch(span)}
    return quoted | set(BARE.findall(re.sub(r"`[^`\n]+`", "", text)))


def test_every_path_the_architecture_names_exists() -> None:
    named = named_paths(DOCUMENT.read_text())

    missing = sorted(path for path in named if not any((b / path).exists() for b in BASES))

    assert len(named) > 40  # the map names the parts' files
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_a_path_is_read_from_the_root_or_from_rnnserve() -> None:
    spans = "`scripts/test.sh` `service/dataplane/plane.py` `redis+cluster://` `/var/lock/x`"
    bare = "as tests/locks.py says, not /etc/hosts.py nor https://example.com/a.py"

    assert named_paths(f"{spans} `models/<name>/<version>/` `a b/c` {bare}") == {
        "scripts/test.sh", "service/dataplane/plane.py", "tests/locks.py",
    }  # fmt: skip
