"""Each output's SHA-256, written beside it as `<file>.sha256` (the line `sha256sum -c` reads),
so that a file truncated or changed after it was written is found where it is read, and
removed and made again by the next run (common.smk), never taken as a result. Standard library
only: the Snakefile imports it too, where torch may be missing."""

import hashlib
from pathlib import Path

SUFFIX = ".sha256"


def sidecar(path):
    """Where the checksum of `path` is written."""
    return Path(f"{path}{SUFFIX}")


def digest(path):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def line(path, value):
    """The sidecar's text: `sha256sum`'s format, so `sha256sum -c` checks it in its folder."""
    return f"{value}  {Path(path).name}\n"


def matches(path):
    """False only when `path` has a checksum written with it and no longer matches it."""
    try:
        words = sidecar(path).read_text().split()
    except FileNotFoundError:
        return True  # not written by the study's scripts (or before checksums were written)
    return bool(words) and words[0] == digest(path)


def mismatched(folder):
    """The files under `folder` that no longer match the checksum written with them."""
    out = []
    for side in sorted(Path(folder).rglob(f"*{SUFFIX}")):
        path = side.with_name(side.name.removesuffix(SUFFIX))
        if path.is_file() and not matches(path):
            out.append(path)
    return out
