"""The package's rooms import downwards only (docs/architecture.md, "The package")."""

import ast
import pathlib

import dact_tf

# From the bottom up: a module may import its own room and the rooms before it.
ROOMS = ["config", "version", "utils", "ops", "callbacks", "exits", "data", "layers", "models",
         "evaluation", "calibration", "export", "training", "tasks", "cli"]
PACKAGE = pathlib.Path(dact_tf.__file__).parent


def _room(parts):
    return parts[1] if len(parts) > 1 else None


def _imports(path):
    """The dact_tf modules a file imports, lazily or not (`dact_tf.x.y` dotted)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dact_tf":
            if node.module == "dact_tf":
                yield from ("dact_tf." + alias.name for alias in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "dact_tf")


def test_every_module_lies_in_a_room():
    loose = sorted(p.name for p in PACKAGE.glob("*.py")
                   if p.stem not in ROOMS + ["__init__", "__main__"])
    assert not loose, f"modules outside the rooms: {loose}"
    folders = sorted(p.name for p in PACKAGE.iterdir()
                     if p.is_dir() and (p / "__init__.py").exists())
    assert set(folders) <= set(ROOMS), set(folders) - set(ROOMS)


def test_imports_point_downwards():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        source = _room(parts) if len(parts) > 2 else parts[1]
        if source in ("__init__", "__main__"):
            continue  # the package's face imports what it offers
        for target in _imports(path):
            room = _room(target.split("."))
            if room in ROOMS and ROOMS.index(room) > ROOMS.index(source):
                upward.append(f"{path.relative_to(PACKAGE.parent)} ({source}) imports {target}")
    assert not upward, "\n".join(upward)


def test_the_old_top_level_names_still_import_with_a_warning():
    import pytest

    with pytest.warns(DeprecationWarning, match="dact_tf.training.train_lib"):
        from dact_tf import train_lib
    from dact_tf.training import train_lib as moved
    assert train_lib is moved
    with pytest.raises(AttributeError):
        dact_tf.no_such_module  # noqa: B018
