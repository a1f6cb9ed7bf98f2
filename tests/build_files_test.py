"""The BUILD files tell the truth about the package (docs/architecture.md, "The package").

Nothing builds them, so nothing else would notice when a module moves or an import
changes. The BUILD files are Starlark, whose syntax is Python's: each one is read
with `ast`, its rules evaluated (lists, strings, `+`, `glob`), and the targets
compared with the files and with the imports of their sources. No TensorFlow.
"""

import ast
import collections
import functools
import pathlib
import re
import sys

import pytest

# The checkout (resolve(): under `bazel test` this file is a link into it).
ROOT = pathlib.Path(__file__).resolve().parents[1]
# runs/ is the git-ignored output folder (models, the study's code snapshot): not the source tree.
SKIP_DIRS = {".git", ".venv", "__pycache__", "build", "dist", "node_modules", "runs"}

PY_RULES = {"py_library", "py_test", "py_binary"}
NATIVE = {"package", "exports_files", "filegroup", "glob", "load", "licenses"}
FIRST_PARTY = {"dact_tf", "tests", "examples"}
# Import name -> @pypi//name where they differ.
PYPI_NAMES = {"absl": "absl_py", "tensorflow_serving": "tensorflow_serving_api"}
PYPI_LABEL = re.compile(r"^@pypi//[a-z0-9_]+$")


def _walk(top):
    for path in sorted(top.iterdir()):
        if path.is_dir():
            if path.name not in SKIP_DIRS and not path.name.endswith(".egg-info"):
                yield from _walk(path)
        else:
            yield path


def _package_of(path):
    """The Bazel package holding a file: the nearest folder above it with a BUILD."""
    folder = path.parent
    while not (folder / "BUILD").exists():
        if folder == ROOT:
            raise AssertionError(f"{path} lies in no package")
        folder = folder.parent
    return folder


class _Rule:
    def __init__(self, build, kind, attrs, line):
        self.build, self.kind, self.attrs, self.line = build, kind, attrs, line
        self.folder = build.parent
        self.package = self.folder.relative_to(ROOT).as_posix() if self.folder != ROOT else ""
        self.name = attrs.get("name")

    @property
    def label(self):
        return f"//{self.package}:{self.name}"

    def files(self, attr):
        """The attribute's entries that are files of this package (not labels), as paths."""
        entries = self.attrs.get(attr, [])
        return [self.folder / f for f in entries if not f.startswith((":", "//", "@"))]

    def labels(self, attr):
        return [entry for entry in self.attrs.get(attr, []) if entry.startswith((":", "//"))]

    def __repr__(self):
        return f"{self.label} ({self.build.relative_to(ROOT)}:{self.line})"


class _Evaluator:
    """Evaluates the expressions BUILD files use: literals, lists, `+`, `glob([...])`."""

    def __init__(self, build):
        self.build = build

    def __call__(self, node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self(element) for element in node.elts]
        if isinstance(node, ast.Dict):
            return {self(k): self(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self(node.left) + self(node.right)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "glob":
            keywords = {k.arg: self(k.value) for k in node.keywords}
            return self.glob(*[self(a) for a in node.args], **keywords)
        raise AssertionError(f"{self.build}:{node.lineno}: cannot evaluate {ast.unparse(node)}")

    def glob(self, include, exclude=()):
        """Bazel's glob: files only, and none from a subpackage (a folder with its own BUILD)."""
        folder = self.build.parent
        found = set()
        for pattern in include:
            if pattern.endswith("**"):  # pathlib's "**" matches folders only
                pattern += "/*"
            for path in folder.glob(pattern):
                if (path.is_file() and "__pycache__" not in path.parts
                        and _package_of(path) == folder):
                    found.add(path.relative_to(folder).as_posix())
        for pattern in exclude:
            found -= {p.relative_to(folder).as_posix() for p in folder.glob(pattern)}
        assert found, f"{self.build}: glob({include}) matches no file"
        return sorted(found)


def _parse(build):
    tree = ast.parse(build.read_text(), filename=str(build))
    evaluate = _Evaluator(build)
    loaded, rules, exported = set(), [], set()
    for statement in tree.body:
        assert isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call), (
            f"{build}:{statement.lineno}: only calls at the top level")
        call = statement.value
        kind = call.func.id
        if kind == "load":
            source = call.args[0].value
            assert source == "@rules_python//python:defs.bzl", f"{build}: load {source}"
            loaded |= {evaluate(a) for a in call.args[1:]}
            continue
        assert kind in PY_RULES | NATIVE, f"{build}:{call.lineno}: unknown rule {kind}"
        assert kind not in PY_RULES or kind in loaded, (
            f"{build}:{call.lineno}: {kind} used but not loaded")
        if kind == "exports_files":
            exported |= set(evaluate(call.args[0]))
            continue
        if kind in ("package", "licenses"):
            continue
        attrs = {k.arg: evaluate(k.value) for k in call.keywords}
        rules.append(_Rule(build, kind, attrs, call.lineno))
    unused = loaded - {rule.kind for rule in rules}
    assert not unused, f"{build}: loads {sorted(unused)} but uses none"
    return rules, exported


@functools.cache
def _graph():
    """All BUILD files: {package: {name: rule}} and {package: exported files}."""
    builds = [p for p in _walk(ROOT) if p.name == "BUILD"]
    targets, exports = {}, {}
    for build in builds:
        rules, exported = _parse(build)
        package = build.parent.relative_to(ROOT).as_posix() if build.parent != ROOT else ""
        exports[package] = exported
        names = collections.Counter(rule.name for rule in rules)
        assert all(n == 1 for n in names.values()), f"{build}: duplicate names {names}"
        targets[package] = {rule.name: rule for rule in rules}
    return targets, exports


def _rules(kinds=PY_RULES):
    targets, _ = _graph()
    return [rule for package in targets.values() for rule in package.values() if rule.kind in kinds]


def _resolve(label, package):
    """(package, name) of a label written in `package`."""
    if label.startswith(":"):
        return package, label[1:]
    assert label.startswith("//"), label
    path, _, name = label[2:].partition(":")
    return path, name or path.rsplit("/", 1)[-1]


def _target(label, rule):
    targets, _ = _graph()
    package, name = _resolve(label, rule.package)
    return targets.get(package, {}).get(name)


@functools.cache
def _closure(label):
    """The source files of a target and of everything it depends on."""
    package, name = _resolve(label, "")
    rule = _graph()[0].get(package, {}).get(name)
    if rule is None:  # test_every_label_names_a_target_that_exists names it
        return frozenset()
    files = set(rule.files("srcs"))
    for dep in rule.labels("deps"):
        files |= _closure(_canonical(dep, rule))
    return frozenset(files)


def _canonical(label, rule):
    package, name = _resolve(label, rule.package)
    return f"//{package}:{name}"


def _module_file(module):
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def _moved_modules(source, tree):
    """dact_tf/__init__.py's `_MOVED` table: old names it imports on first use."""
    if source != ROOT / "dact_tf" / "__init__.py":
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_MOVED":
            return list(ast.literal_eval(node.value).values())
    raise AssertionError("dact_tf/__init__.py has no _MOVED table")


@functools.cache
def _imports(source):
    """(first-party files, third-party names) a source imports, in functions too."""
    tree = ast.parse(source.read_text(), filename=str(source))
    first, third = {}, set()

    def add(module, line):
        found = _module_file(module)
        assert found, f"{source.relative_to(ROOT)}:{line} imports {module}, which is no file"
        first.setdefault(found, f"{module} (line {line})")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FIRST_PARTY:
                    add(alias.name, node.lineno)
                else:
                    third.add(top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from its own package
                base = source.relative_to(ROOT).parent.parts
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module
            top = module.split(".")[0]
            if top not in FIRST_PARTY:
                third.add(top)
                continue
            for alias in node.names:
                # `from a.b import c`: the module a.b.c if there is one, else a name in a.b.
                if _module_file(f"{module}.{alias.name}"):
                    add(f"{module}.{alias.name}", node.lineno)
                else:
                    add(module, node.lineno)
    for module in _moved_modules(source, tree):
        add(module, "_MOVED")
    third -= set(sys.stdlib_module_names) | {"__future__"}
    return first, third


def _dact_tf_libraries():
    return [rule for rule in _rules({"py_library"}) if rule.package.split("/")[0] == "dact_tf"]


# The tests.


def test_the_build_files_are_found_and_read():
    targets, _ = _graph()
    assert {"", "dact_tf", "dact_tf/models", "dact_tf/training", "examples"} <= set(targets)
    assert len(_dact_tf_libraries()) > 20


# Package folders whose modules a target of the folder above holds (an import cycle
# with a module there, which Bazel cannot split into two targets).
HELD_BY_PARENT = {"dact_tf/models/families": "//dact_tf/models:encoders"}


def test_every_python_package_folder_in_dact_tf_has_a_build_file():
    folders = {p.parent for p in (ROOT / "dact_tf").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    missing = sorted(f.relative_to(ROOT).as_posix() for f in folders if not (f / "BUILD").exists())
    missing = [folder for folder in missing if folder not in HELD_BY_PARENT]
    assert not missing, f"package folders without a BUILD: {missing}"
    for folder, label in HELD_BY_PARENT.items():
        if (ROOT / folder).is_dir() and not (ROOT / folder / "BUILD").exists():
            assert ROOT / folder / "__init__.py" in _closure(label), (folder, label)


def test_srcs_and_data_files_exist_in_their_package():
    problems = []
    for rule in _rules(PY_RULES | {"filegroup"}):
        for attr in ("srcs", "data"):
            for path in rule.files(attr):
                if not path.is_file():
                    problems.append(f"{rule}: {attr} {path.relative_to(ROOT)} does not exist")
                elif _package_of(path) != rule.folder:
                    problems.append(
                        f"{rule}: {attr} {path.relative_to(ROOT)} lies in another package")
        if rule.kind in PY_RULES:
            assert rule.attrs.get("srcs"), f"{rule} has no srcs"
            for path in rule.files("srcs"):
                if path.suffix != ".py":
                    problems.append(f"{rule}: srcs {path.name} is no Python file")
        if rule.kind in ("py_test", "py_binary"):  # main defaults to <name>.py
            main = rule.attrs.get("main", f"{rule.name}.py")
            if main not in rule.attrs["srcs"]:
                problems.append(f"{rule}: main {main} is not in srcs")
    assert not problems, "\n".join(problems)


def test_every_dact_tf_module_is_in_exactly_one_library():
    owners = collections.defaultdict(list)
    for rule in _rules({"py_library"}):
        for path in rule.files("srcs"):
            owners[path].append(rule)
    modules = [p for p in (ROOT / "dact_tf").rglob("*.py") if "__pycache__" not in p.parts]
    assert len(modules) > 50
    wrong = [f"{p.relative_to(ROOT)}: {owners[p] or 'in no py_library'}"
             for p in sorted(modules) if len(owners[p]) != 1]
    assert not wrong, "\n".join(wrong)


def test_every_test_file_is_a_py_test():
    declared = {path for rule in _rules({"py_test"}) for path in rule.files("srcs")}
    tests = sorted(p for p in (ROOT / "tests").rglob("*_test.py") if p not in declared)
    assert not tests, f"no py_test runs {[str(p.relative_to(ROOT)) for p in tests]}"


def test_every_label_names_a_target_that_exists():
    targets, exports = _graph()
    problems = []
    for rule in _rules(PY_RULES | {"filegroup"}):
        for attr in ("deps", "data", "srcs"):
            for entry in rule.attrs.get(attr, []):
                if entry.startswith("@"):
                    if attr != "deps" or not PYPI_LABEL.match(entry):
                        problems.append(f"{rule}: {attr} {entry} is no @pypi//name")
                    continue
                if not entry.startswith((":", "//")):
                    continue
                package, name = _resolve(entry, rule.package)
                if package not in targets:
                    problems.append(f"{rule}: {entry}: there is no {package or '.'}/BUILD")
                elif name not in targets[package]:
                    is_file = name in exports[package] or (
                        package == rule.package and (rule.folder / name).is_file())
                    if attr == "deps" or not is_file:
                        problems.append(
                            f"{rule}: {entry}: {package or '.'}/BUILD defines no {name}")
                elif attr == "deps" and targets[package][name].kind not in PY_RULES:
                    problems.append(f"{rule}: deps {entry} is a {targets[package][name].kind}")
                if _canonical(entry, rule) == rule.label:
                    problems.append(f"{rule} depends on itself")
    assert not problems, "\n".join(problems)


def test_the_dependency_graph_has_no_cycles():
    state = {}

    def visit(label, path):
        if state.get(label) == "done":
            return
        assert state.get(label) != "open", "cycle: " + " -> ".join(path + [label])
        state[label] = "open"
        package, name = _resolve(label, "")
        rule = _graph()[0].get(package, {}).get(name)
        for dep in rule.labels("deps") if rule else []:
            visit(_canonical(dep, rule), path + [label])
        state[label] = "done"

    for rule in _rules():
        visit(rule.label, [])


def test_every_first_party_import_is_provided_by_the_deps():
    """A target's sources import only modules of its own srcs or of its deps (transitively)."""
    missing = []
    for rule in _rules():
        provided = _closure(rule.label)
        for source in filter(pathlib.Path.is_file, rule.files("srcs")):
            for path, module in _imports(source)[0].items():
                if path not in provided:
                    missing.append(f"{rule}: {source.relative_to(ROOT)} imports {module} "
                                   f"({path.relative_to(ROOT)}), in no dep")
    assert not missing, "\n".join(missing)


def test_dact_tf_libraries_depend_only_on_what_they_import():
    """Each first-party dep of a dact_tf library holds a module that its sources import."""
    unused = []
    for rule in _dact_tf_libraries():
        sources = filter(pathlib.Path.is_file, rule.files("srcs"))
        imported = {p for source in sources for p in _imports(source)[0]}
        for dep in rule.labels("deps"):
            target = _target(dep, rule)
            if target and not imported & set(target.files("srcs")):
                unused.append(f"{rule}: deps {dep}, but imports none of its modules")
    assert not unused, "\n".join(unused)


def test_dact_tf_libraries_declare_their_third_party_imports():
    missing = []
    for rule in _dact_tf_libraries():
        declared = {d.split("//")[1] for d in rule.attrs.get("deps", []) if d.startswith("@pypi//")}
        for source in filter(pathlib.Path.is_file, rule.files("srcs")):
            for name in sorted(_imports(source)[1]):
                if PYPI_NAMES.get(name, name) not in declared:
                    missing.append(f"{rule}: {source.relative_to(ROOT)} imports {name}: "
                                   f"no @pypi//{PYPI_NAMES.get(name, name)}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("label, module", [
    ("//dact_tf/training:train_lib", "dact_tf/training/train_lib.py"),
    ("//dact_tf/utils:files", "dact_tf/utils/files.py"),
    ("//dact_tf/tasks:text_classifier", "dact_tf/tasks/text_classifier.py"),
    ("//dact_tf/calibration:halting_bias", "dact_tf/calibration/halting_bias.py"),
    ("//dact_tf/evaluation:scoring", "dact_tf/evaluation/scoring.py"),
])
def test_the_moved_modules_have_targets_in_their_rooms(label, module):
    assert ROOT / module in _closure(label)
