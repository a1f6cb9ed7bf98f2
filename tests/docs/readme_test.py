"""The README (and docs/) as written: real commands and flags, a quickstart that runs.

- Every `dact-tf COMMAND ...` line in a shell block of README.md or docs/*.md names a real
  command and only flags that `dact_tf.cli.main` defines, listed for that command in
  `dact-tf COMMAND --help`, with values their parsers accept.
- The README's command-line quickstart runs as written, train -> evaluate -> predict ->
  export, on the shipped SST-2 sample with a tiny backbone (subprocesses).
- Python blocks compile; `dact_tf.x.y` names resolve; relative links and repository paths
  exist.
"""

import importlib
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from dact_tf.data import builtin_sst2_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")
PAGES = [README] + sorted(
    os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".md"))
SHELL = ("bash", "sh", "shell")
# As in tests/cli/cli_test.py: a tiny backbone and a few rows.
TINY = [
    "--backbone=tiny", "--sequence_length=16", "--max_train_examples=64",
    "--max_eval_examples=48", "--batch_size=16", "--epochs=1", "--learning_rate=1e-3",
]
# Quickstart commands whose flags are checked but which do not run here, for time (their
# commands have their own tests: tests/cli/calibrate_test.py, tests/export/tflite_test.py).
NOT_RUN = ("calibrate", "--format=tflite")
# Flags every command takes (absl's own).
GLOBAL_FLAGS = {"verbosity", "help", "helpfull", "helpshort"}
QUICKSTART = "Quickstart: the command line"
# A full checkout (under Bazel only README.md and docs/ are the test's data).
CHECKOUT = os.path.exists(os.path.join(REPO, "Makefile"))
SETUP = "Set-up: two commands"


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def code_blocks(path):
    """`[(language, text, heading)]`: the fenced blocks of a Markdown file, in order."""
    blocks, heading, fence = [], None, None
    for line in read(path).splitlines():
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.startswith("```"):
                fence, language, body = line[:3], line[3:].strip(), []
        elif line.startswith(fence):
            blocks.append((language, "\n".join(body), heading))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"{path}: a code block is not closed"
    return blocks


def shell_commands(text):
    """The logical lines of a shell block (backslash continuations joined)."""
    lines, current = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    if current:
        lines.append(current)
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def dact_tf_args(command):
    """The arguments after `dact-tf` (or `python -m dact_tf`) in a command, or None."""
    if not re.search(r"dact-tf|-m dact_tf\b", command):
        return None  # other tools' commands may quote across lines
    tokens = shlex.split(command, comments=True)
    for i, token in enumerate(tokens):
        if token == "dact-tf" or token.endswith("/dact-tf"):
            return tokens[i + 1:]
        if token == "dact_tf" and i >= 1 and tokens[i - 1] == "-m":
            return tokens[i + 1:]
    return None


def invocations(path, heading=None):
    """`[(command line, args)]` of the dact-tf commands in `path`'s shell blocks."""
    found = []
    for language, text, under in code_blocks(path):
        if language in SHELL and (heading is None or under == heading):
            for command in shell_commands(text):
                args = dact_tf_args(command)
                if args is not None:
                    found.append((command, args))
    return found


def split_args(args):
    """`(command, [(flag name as written, value or None)], stray tokens)`."""
    command, flags, stray = None, [], []
    for token in args:
        if token == "...":  # a placeholder for "the other flags"
            continue
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            flags.append((name, value if eq else None))
        elif command is None:
            command = token
        else:
            stray.append(token)
    return command, flags, stray


@pytest.fixture(scope="module")
def cli():
    """`(FLAGS, COMMANDS, the flags --help lists per command)` of the real command line."""
    from absl import flags

    from dact_tf.cli import help_text
    from dact_tf.cli import main

    listed = {command: {name for names in groups.values() for name in names}
              for command, groups in help_text.COMMAND_FLAGS.items()}
    return flags.FLAGS, main.COMMANDS, listed


def all_invocations():
    return [(os.path.relpath(path, REPO), command, args)
            for path in PAGES for command, args in invocations(path)]


INVOCATIONS = all_invocations()


def test_the_pages_show_dact_tf_commands():
    pages = {page for page, _, _ in INVOCATIONS}
    assert "README.md" in pages and os.path.join("docs", "cli.md") in pages


@pytest.mark.parametrize("page, command, args", INVOCATIONS,
                         ids=[f"{page}:{i}" for i, (page, _, _) in enumerate(INVOCATIONS)])
def test_commands_use_real_commands_flags_and_values(cli, page, command, args):
    flag_values, commands, listed = cli
    name, flags, stray = split_args(args)
    where = f"{page}: {command}"
    assert not stray, f"{where}: stray arguments {stray}"
    if name is None:  # `dact-tf --help`
        assert flags and all(f in GLOBAL_FLAGS for f, _ in flags), where
        return
    assert name in commands, f"{where}: no command {name!r} (commands: {commands})"
    for written, value in flags:
        flag = written
        if flag not in flag_values and flag.startswith("no") and value is None:
            flag = flag[2:]
            assert flag in flag_values and flag_values[flag].boolean, \
                f"{where}: --{written} is not a boolean flag's negation"
        assert flag in flag_values, f"{where}: no flag --{flag}"
        assert flag in listed[name] | GLOBAL_FLAGS, \
            f"{where}: --{flag} is not one of `dact-tf {name} --help`'s flags"
        if value is not None:
            flag_values[flag].parser.parse(value)  # raises on a value the flag refuses
        else:
            assert flag_values[flag].boolean or flag in GLOBAL_FLAGS, \
                f"{where}: --{flag} needs a value"


def test_setup_is_the_two_make_commands():
    blocks = [text for language, text, heading in code_blocks(README)
              if language in SHELL and heading == SETUP]
    assert len(blocks) == 1
    lines = [line.split("#")[0].strip() for line in shell_commands(blocks[0])]
    assert lines == ["make demo", "make test"]
    if CHECKOUT:
        makefile = read(os.path.join(REPO, "Makefile"))
        assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_python_blocks_compile():
    for path in PAGES:
        for i, (language, text, _) in enumerate(code_blocks(path)):
            if language == "python":
                compile(text, f"{os.path.relpath(path, REPO)} block {i}", "exec")


def resolve(dotted):
    """The object `dact_tf.a.b.c` names (the longest importable module, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def test_dact_tf_names_in_the_pages_exist():
    names = set()
    for path in PAGES:
        names.update(re.findall(r"\bdact_tf(?:\.[A-Za-z_]\w*)+", read(path)))
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"names that do not exist: {missing}"


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_and_repository_paths_exist():
    problems = []
    for path in PAGES:
        text = read(path)
        where = os.path.relpath(path, REPO)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(file):
                if CHECKOUT or file.startswith(DOCS) or file == README:
                    problems.append(f"{where}: link {target}")
            elif anchor:
                headings = [line.lstrip("#") for line in read(file).splitlines()
                            if line.startswith("#")]
                if anchor not in {slug(h) for h in headings}:
                    problems.append(f"{where}: anchor {target}")
        for ref in re.findall(r"`((?:benchmarks|dact_tf|docs|tests|examples)/[\w./-]*)`", text):
            if CHECKOUT and not os.path.exists(os.path.join(REPO, ref)):
                problems.append(f"{where}: path {ref}")
    assert not problems, "\n".join(problems)


def for_the_test(args):
    """A quickstart command's arguments, on the shipped SST-2 sample and a tiny backbone."""
    tiny = {flag.split("=")[0] for flag in TINY}
    out = []
    for arg in args:
        name = arg.split("=")[0]
        if name == "--data_dir":
            arg = f"--data_dir={builtin_sst2_dir()}"
        elif name in tiny:
            continue
        out.append(arg)
    return out + (TINY if out[0] == "train" else [])


def run_dact_tf(args, cwd):
    env = dict(os.environ, DACT_TF_CACHE=str(cwd / "cache"), PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "dact_tf", *args], capture_output=True,
                          text=True, env=env, cwd=str(cwd), timeout=300)
    assert proc.returncode == 0, f"dact-tf {args} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.large  # a whole CLI chain: CI runs it (make test-large)
def test_the_command_line_quickstart_runs_as_written(tmp_path):
    steps = invocations(README, heading=QUICKSTART)
    names = [split_args(args)[0] for _, args in steps]
    for needed in ("train", "evaluate", "predict", "calibrate", "export"):
        assert needed in names, f"the quickstart has no `dact-tf {needed}`"
    assert names.index("train") < min(names.index(n) for n in names if n != "train")
    ran = []
    for command, args in steps:
        args = for_the_test(args)
        if any(token in args for token in NOT_RUN):
            continue
        proc = run_dact_tf(args, tmp_path)
        ran.append(args[0])
        flags = dict(split_args(args)[1])
        model_dir = tmp_path / flags["model_dir"]
        if args[0] == "train":
            assert (model_dir / "model.keras").exists()
        elif args[0] == "evaluate":
            results = json.loads(proc.stdout[proc.stdout.index("{"):])
            assert results["num_examples"] == 48 and 1 <= results["mean_layers_executed"] <= 4
            if flags.get("output_json"):
                assert json.loads((tmp_path / flags["output_json"]).read_text()) == results
        elif args[0] == "predict":
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            assert row["label"] in ("negative", "positive") and row["num_layers"] == 4
        elif args[0] == "export":
            export_dir = tmp_path / flags["export_dir"]
            assert (export_dir / "1" / "saved_model.pb").exists()
    assert ran[:1] == ["train"] and {"evaluate", "predict", "export"} <= set(ran)
