"""The documentation says what the code does: links resolve, every setting and route is listed."""

from __future__ import annotations

import re

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def _anchors(path) -> set:
    return {_anchor(line) for line in path.read_text().splitlines() if line.startswith("#")}


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for doc in DOCS:
        for target in _LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    assert "bash setup.sh && " in readme and "bash setup.sh --tests && " in readme


def test_every_setting_the_app_reads_is_documented_and_every_documented_one_is_read():
    code = (ROOT / "apps/medsam2/lib/app_config.py").read_text()
    read = set(re.findall(r"_(?:flag|number|choice)\(conf, \"([a-z0-9_]+)\"", code))
    read |= set(re.findall(r"conf\.get\(\"([a-z0-9_]+)\"", code))
    table = (ROOT / "docs/settings.md").read_text()
    documented = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([a-z0-9_<>]+)`", line.split("|")[1]))
    documented.discard("finetune_<option>")
    assert read - documented == set(), f"read but not in docs/settings.md: {sorted(read - documented)}"
    assert documented - read == set(), f"documented but never read: {sorted(documented - read)}"


def test_the_route_table_is_the_inventory():
    from lib.http.inventory import markdown_table

    assert markdown_table() in (ROOT / "docs/security.md").read_text()


def test_every_module_the_architecture_names_exists():
    text = (ROOT / "docs/architecture.md").read_text()
    names = set(re.findall(r"`([\w/]+\.(?:py|sh))`", text))
    files = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.suffix in (".py", ".sh")
             and ".venv" not in p.parts and "node_modules" not in p.parts}
    missing = [n for n in names if not any(f == n or f.endswith("/" + n) for f in files)]
    assert len(names) > 40 and not missing, missing


def test_the_architecture_names_every_module_of_the_apps_packages():
    """The packages of the app's glue, each module of them named on the page (a new module must be
    placed and said), and the old flat route modules gone."""
    text = (ROOT / "docs/architecture.md").read_text()
    lib = ROOT / "apps/medsam2/lib"
    for package in ("http", "datastores", "infers"):
        assert (lib / package / "__init__.py").is_file(), package
        unnamed = [p.name for p in (lib / package).glob("*.py") if p.name != "__init__.py"
                   and f"`{p.name}`" not in text and f"`lib/{package}/{p.name}`" not in text]
        assert not unnamed, (package, unnamed)
    flat = sorted(p.name for p in lib.glob("*.py") if "route" in p.name or p.name.startswith("datastore"))
    assert not flat, flat


def test_the_memory_owner_on_the_architecture_page_is_the_codes():
    """Every class the page's "The memory owner" names exists, and main.py builds one StudyMemory and
    hands that one to every service (a second store would be a second budget)."""
    text = (ROOT / "docs/architecture.md").read_text()
    section = text[text.index("## The memory owner"):text.index("## One name per idea")]
    engine = "\n".join(p.read_text() for p in (ROOT / "apps/medsam2/medsam2_engine").rglob("*.py"))
    names = set(re.findall(r"`([A-Z]\w+)`", section))
    assert {"StudyMemory", "FeatureCache", "FeatureKey", "Session"} <= names
    assert not [n for n in names if f"class {n}" not in engine], names
    main = (ROOT / "apps/medsam2/main.py").read_text()
    assert main.count("StudyMemory.from_settings(") == 1 and "StudyMemory(" not in main
    for service in ("VolumeSegmenter(", "ImageSegmenter(", "OnePromptSegmenter("):
        call = main[main.index(service):main.index(")", main.index(service) + len(service) + 60)]
        assert "memory=self.memory" in call, service
