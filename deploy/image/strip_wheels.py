"""Strips the debug information from the shared libraries in wheels, in place, and rewrites
their RECORD to match: several dependencies (uvloop, asyncpg, asyncmy, sqlalchemy) ship their
extensions with it, some 50 MB of the image. Run by build.sh on the wheels it builds, with
binutils' `strip` (the image's build stage has none, and no network to get it).

    python deploy/image/strip_wheels.py WHEEL…
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def strip_wheel(wheel: Path) -> int:
    """Strips `wheel`'s `.so` files; returns the bytes saved (0: nothing to strip)."""
    with zipfile.ZipFile(wheel) as source:
        members = source.infolist()
        contents = {m.filename: source.read(m) for m in members}
    libraries = [name for name in contents if name.endswith(".so") or ".so." in name.rsplit("/", 1)[-1]]
    if not libraries:
        return 0
    saved = 0
    with tempfile.TemporaryDirectory() as folder:
        for name in libraries:
            path = Path(folder, name.replace("/", "_"))
            path.write_bytes(contents[name])
            subprocess.run(["strip", "--strip-debug", str(path)], check=True)
            stripped = path.read_bytes()
            saved += len(contents[name]) - len(stripped)
            contents[name] = stripped
    if saved == 0:
        return 0
    (record,) = [name for name in contents if name.endswith(".dist-info/RECORD")]
    rows = []
    for row in csv.reader(io.StringIO(contents[record].decode())):
        if row and row[0] in libraries:
            row = [row[0], record_hash(contents[row[0]]), str(len(contents[row[0]]))]
        rows.append(row)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    contents[record] = out.getvalue().encode()
    partial = wheel.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as target:
        for member in members:  # same order, names, dates and permissions
            target.writestr(member, contents[member.filename], zipfile.ZIP_DEFLATED)
    os.replace(partial, wheel)
    return saved


def main() -> None:
    total = sum(strip_wheel(Path(arg)) for arg in sys.argv[1:])
    print(f"strip_wheels: {total / 1e6:.1f} MB of debug information removed", file=sys.stderr)


if __name__ == "__main__":
    main()
