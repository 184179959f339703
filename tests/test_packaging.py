"""`pip install .` ships every package of the source tree (pyproject lists them by hand)."""
import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = {"qcompile": "qcompile", "passes": "qcompile.passes", "backends": "qcompile.backends"}


def _packages_in_tree() -> set[str]:
    found = set()
    for top, installed in TOP.items():
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                rel = os.path.relpath(folder, os.path.join(ROOT, top))
                found.add(installed if rel == "." else installed + "." + rel.replace(os.sep, "."))
    return found


def test_every_package_is_listed_in_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    assert _packages_in_tree() - listed == set()
    assert listed - _packages_in_tree() == set()
