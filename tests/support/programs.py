"""The one way tests find a system program: through scripts/test-packages.txt.

`make test` installs every package that list names, so a program a test starts
is on a fresh machine only when its package is there. Asking for a program the
list does not name fails at once, telling what to add, instead of passing on a
machine where an earlier run happened to install it.
"""

import glob
import os
import shutil
from functools import cache
from pathlib import Path

PACKAGES_FILE = Path(__file__).resolve().parents[2] / "scripts" / "test-packages.txt"
# Where Debian puts programs that are not on a normal user's PATH.
# PostgreSQL's own binaries come first: /usr/bin has only pg_wrapper's links to some of them.
SEARCH_PATH = ":".join([*sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True), os.environ.get("PATH", ""),
                        "/usr/sbin", "/sbin"])


class MissingProgram(AssertionError):
    pass


@cache
def packages() -> dict[str, list[str]]:
    """{package: [program, ...]} as scripts/test-packages.txt lists them."""
    listed = {}
    for number, line in enumerate(PACKAGES_FILE.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        package, sep, programs = line.partition(":")
        if not sep or not package.strip():
            raise ValueError(f"{PACKAGES_FILE.name} line {number}: expected 'package: programs', got {line!r}")
        listed[package.strip()] = programs.split()
    return listed


def package_of(name: str) -> str | None:
    return next((package for package, programs in packages().items() if name in programs), None)


def program(name: str) -> str:
    """The absolute path of system program ``name``, which scripts/test-packages.txt must list."""
    package = package_of(name)
    if package is None:
        raise MissingProgram(f"tests start '{name}', which scripts/test-packages.txt does not list: "
                             f"add its Debian package there so that make test installs it")
    path = shutil.which(name, path=SEARCH_PATH)
    if path is None:
        raise MissingProgram(f"'{name}' is not installed: run make test, which installs Debian's {package}")
    return path
