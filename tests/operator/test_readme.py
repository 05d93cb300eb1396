"""The README stays the operator's reference: its two commands, and every setting Herald reads."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_keeps_its_two_commands_and_the_makefile_has_them():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for command in ("make demo", "make test"):
        assert command in readme
        assert re.search(rf"^{command.split()[1]}:", makefile, re.MULTILINE)


def test_every_setting_read_from_the_environment_is_documented():
    settings_source = (ROOT / "herald" / "settings.py").read_text()
    names = set(re.findall(r'env(?:str|bool|int|list|secret)\("([A-Z0-9_]+)"', settings_source))
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing, f"settings missing from README.md's table: {missing}"
