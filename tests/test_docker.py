"""The container files, checked without a container engine.

- docker/entrypoint.sh is run outside a container, against the installed package (the console
  scripts beside this Python), and must dispatch each command to the right program.
- Every command in docker/README.md, the main README.md, docs/*.md (shell blocks and inline code) and
  docker/slurm/*.sbatch that calls train/predict/data (as train.py, neurotwin-train,
  `python -m neurotwin.cli.train`, the image's entrypoint commands, or through torchrun) may only
  use flags that the program's argparse parser defines.
- The Dockerfile copies only what exists and is not excluded from the build context; hadolint
  passes (when installed: CI installs it with the dev extra and also runs it itself).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
DOCKERFILE = DOCKER / "Dockerfile"
BIN = Path(sys.executable).parent  # the environment whose console scripts the entrypoint runs

# ----------------------------------------------------------------------------------------------
# Running the entrypoint
# ----------------------------------------------------------------------------------------------


def run_entrypoint(
    *args: str, path_first: Path = BIN, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{path_first}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def test_entrypoint_is_executable_and_valid_bash():
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR, "docker/entrypoint.sh must be executable"
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")
    for script in [ENTRYPOINT, *sorted((DOCKER / "slurm").glob("*.sbatch"))]:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


@pytest.fixture()
def fake_bin(tmp_path: Path) -> Path:
    """Stand-ins for the programs the entrypoint starts: each prints its name and arguments."""
    for name in ["neurotwin-train", "neurotwin-predict", "neurotwin-data", "torchrun"]:
        script = tmp_path / name
        script.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$(basename "$0")" "$@"\n')
        script.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize(
    ("command", "program"),
    [
        ("train", "neurotwin-train"),
        ("predict", "neurotwin-predict"),
        ("data", "neurotwin-data"),
        ("torchrun", "torchrun"),
    ],
)
def test_entrypoint_dispatch_passes_arguments_unchanged(fake_bin, command, program):
    args = ["--config", "configs/my file.yaml", "--mouse_ids", "a", "b", "", "--flag=x y"]
    proc = run_entrypoint(command, *args, path_first=fake_bin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == [program, *args]


def test_entrypoint_without_the_package(tmp_path):
    bash = shutil.which("bash")
    env = {"PATH": f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [bash, str(ENTRYPOINT), "train", "--help"], capture_output=True, text=True, env=env
    )
    if shutil.which("neurotwin-train", path=env["PATH"]):
        pytest.skip("neurotwin-train is installed system-wide")
    assert proc.returncode == 127
    assert "'neurotwin-train' is not on PATH" in proc.stderr


def test_entrypoint_runs_other_programs_as_given(fake_bin):
    proc = run_entrypoint("printf", "%s|", "a b", "--help", path_first=fake_bin)
    assert (proc.returncode, proc.stdout) == (0, "a b|--help|")
    proc = run_entrypoint("bash", "-c", "exit 7", path_first=fake_bin)
    assert proc.returncode == 7


def test_entrypoint_usage():
    for flag in ["--help", "-h", "help"]:
        proc = run_entrypoint(flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("neurotwin container")
        for command in ["train", "predict", "data", "torchrun"]:
            assert re.search(rf"^  {command} ", proc.stdout, re.M), command
    proc = run_entrypoint()
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "no command given" in proc.stderr
    assert proc.stdout == ""


def test_entrypoint_unknown_command():
    proc = run_entrypoint("nonexistent-command-xyz", "--flag")
    assert proc.returncode == 127
    assert "unknown command 'nonexistent-command-xyz'" in proc.stderr
    assert "usage:" in proc.stderr


def _cli_available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return False
        raise
    return True


def test_entrypoint_dispatches_to_the_installed_package():
    """`train|predict|data --help` through the entrypoint reach the real console scripts."""
    commands = {
        "train": "neurotwin-train",
        "predict": "neurotwin-predict",
        "data": "neurotwin-data",
    }
    present = {c: p for c, p in commands.items() if _cli_available(f"neurotwin.cli.{c}")}
    assert "data" in present
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    # Started together: each one imports torch, and two cores are shared.
    procs = {
        c: subprocess.Popen(
            ["bash", str(ENTRYPOINT), c, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for c in present
    }
    for command, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{command} --help: {err}"
        assert out.startswith("usage: "), out[:200]
        # The help of the right program: it names every option of that program's parser.
        options = importlib.import_module(f"neurotwin.cli.{command}").build_parser()
        options = [o for o in options._option_string_actions if o.startswith("--")]
        assert options and all(o in out for o in options), (command, out[:300])
    missing = sorted(set(commands) - set(present))
    if missing:
        pytest.skip(f"CLI modules not written yet: {missing}")


# ----------------------------------------------------------------------------------------------
# Commands in the docs vs. the argparse parsers
# ----------------------------------------------------------------------------------------------

# Program token (basename) -> CLI name.
PROGRAMS = {
    "train.py": "train",
    "predict.py": "predict",
    "neurotwin-train": "train",
    "neurotwin-predict": "predict",
    "neurotwin-data": "data",
    "neurotwin.cli.train": "train",
    "neurotwin.cli.predict": "predict",
    "neurotwin.cli.data": "data",
}
# Entrypoint commands, recognised right after the image (a `neurotwin[:tag]` image name, a .sif
# file, $IMAGE / $SIF, or the entrypoint script itself).
ENTRY_COMMANDS = {"train": "train", "predict": "predict", "data": "data"}
IMAGE_RE = re.compile(
    r"(^|/)(neurotwin(:[\w.-]+)?|[^/\s]*\.sif|\$\{?(IMAGE|SIF)\}?|entrypoint\.sh)$"
)
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}


@dataclass
class DocCommand:
    program: str  # train | predict | data | torchrun
    args: list[str]
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {shlex.join(self.args)}"


def shell_blocks(text: str, markdown: bool) -> list[tuple[int, str]]:
    """(first line number, text) of each shell code block of a markdown text, or the whole of a
    shell script."""
    if not markdown:
        return [(1, text)]
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 1
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        if lang in SHELL_LANGS:
            blocks.append((start + 1, "\n".join(body)))
    return blocks


def logical_lines(first_line: int, text: str) -> list[tuple[int, str]]:
    """Shell lines with backslash continuations joined and console prompts removed."""
    out: list[tuple[int, str]] = []
    current, start = "", None
    for n, raw in enumerate(text.split("\n"), first_line):
        line = re.sub(r"^\s*\$ ", "", raw) if current == "" else raw
        if start is None:
            start = n
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            out.append((start, current))
        current, start = "", None
    if current.strip():
        out.append((start or first_line, current))
    return out


def split_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def split_torchrun(args: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """torchrun's own arguments, and the script with its arguments."""
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("-") or token == "-":
            return args[:i], args[i:]
        action = parser._option_string_actions.get(token.split("=", 1)[0])
        i += 2 if action is not None and "=" not in token and _takes_value(action) else 1
    return args, []


def find_commands(
    tokens: list[str], where: str, torchrun_parser: argparse.ArgumentParser | None = None
) -> list[DocCommand]:
    """The train/predict/data (and torchrun) invocations in one simple command."""
    for i, token in enumerate(tokens):
        name = PROGRAMS.get(Path(token).name) if "/" in token else PROGRAMS.get(token)
        if name:
            return [DocCommand(name, tokens[i + 1 :], where)]
        if token == "torchrun":
            if torchrun_parser is None:
                torchrun_parser = torchrun_argparser()
            own, script = split_torchrun(tokens[i + 1 :], torchrun_parser)
            return [DocCommand("torchrun", own, where), *find_commands(script, where)]
        if IMAGE_RE.search(token) and i + 1 < len(tokens) and tokens[i + 1] in ENTRY_COMMANDS:
            return [DocCommand(ENTRY_COMMANDS[tokens[i + 1]], tokens[i + 2 :], where)]
    return []


def commands_in_text(
    text: str, name: str, markdown: bool = True, torchrun_parser=None
) -> list[DocCommand]:
    found = []
    for first, block in shell_blocks(text, markdown):
        for n, line in logical_lines(first, block):
            where = f"{name}:{n}"
            try:
                segments = split_commands(line)
            except ValueError as e:
                raise AssertionError(f"{where}: not a valid shell line ({e}): {line}") from None
            for tokens in segments:
                found.extend(find_commands(tokens, where, torchrun_parser))
    return found


def inline_code(text: str) -> list[tuple[int, str]]:
    """(line number, text) of each `inline code` span of a markdown text outside fenced blocks
    (a span may wrap onto the next line)."""
    spans = []
    in_fence = False
    masked = []
    for line in text.split("\n"):
        if re.match(r"^\s*(```|~~~)", line):
            in_fence = not in_fence
            masked.append("")
        else:
            masked.append("" if in_fence else line)
    prose = "\n".join(masked)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        spans.append((prose.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " ")))
    return spans


def commands_in(path: Path) -> list[DocCommand]:
    """Commands in a shell script, or in a markdown file's shell blocks and inline code spans."""
    name = str(path.relative_to(REPO))
    text = path.read_text()
    if path.suffix != ".md":
        return commands_in_text(text, name, markdown=False)
    found = commands_in_text(text, name)
    for n, span in inline_code(text):
        try:
            segments = split_commands(span)
        except ValueError:
            continue  # prose, not a command
        for tokens in segments:
            found.extend(find_commands(tokens, f"{name}:{n}"))
    return found


def _is_flag(token: str) -> bool:
    return token.startswith("-") and token != "-" and not re.match(r"^-\.?\d", token)


def unknown_flags(command: DocCommand, parser: argparse.ArgumentParser) -> list[str]:
    """Problems with the flags of `command` (empty if all exist). Values after a flag are skipped
    as the flag's nargs says; for a parser with sub-commands, the first other positional picks the
    sub-parser that checks the flags after it."""
    problems = []
    args = command.args
    if command.program == "torchrun":
        args = split_torchrun(args, parser)[0]
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if _is_flag(token):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is None:
                problems.append(f"{command.where}: {command.program}: unknown flag {token}")
            if "=" in token or (action is not None and action.nargs == 0):
                continue
            nargs = 1 if action is not None and action.nargs is None else None
            if action is not None and isinstance(action.nargs, int):
                nargs = action.nargs
            # A fixed number of values, or (?, *, +, unknown flags) every value up to the next flag.
            while i < len(args) and not _is_flag(args[i]) and (nargs is None or nargs > 0):
                i += 1
                nargs = None if nargs is None else nargs - 1
            continue
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subparsers:
            choices = subparsers[0].choices
            if token not in choices:
                problems.append(
                    f"{command.where}: {command.program}: unknown sub-command {token!r} "
                    f"(known: {sorted(choices)})"
                )
                return problems
            parser = choices[token]
    return problems


def torchrun_argparser() -> argparse.ArgumentParser:
    from torch.distributed.run import get_args_parser

    return get_args_parser()


def cli_parser(program: str) -> argparse.ArgumentParser | None:
    if program == "torchrun":
        return torchrun_argparser()
    module = f"neurotwin.cli.{program}"
    if not _cli_available(module):
        return None
    return importlib.import_module(module).build_parser()


def doc_files() -> list[Path]:
    files = [DOCKER / "README.md", REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((DOCKER / "slurm").glob("*.sbatch"))
    return [f for f in files if f.is_file()]


def test_doc_command_extraction():
    text = "\n".join(
        [
            "# a comment with train.py --not-a-flag",
            "```bash",
            "docker run --rm -v \"$PWD/runs:/runs\" neurotwin:cu130 train --config 'a b.yaml' \\",
            "    --epochs 3  # trailing comment --nope",
            "$ python train.py --seed=1 && neurotwin-data synthetic --out x; echo --z",
            "torchrun --nproc_per_node=2 --nnodes 1 --standalone --no-python neurotwin-train --lr 1",
            "torchrun --rdzv_endpoint h:1 -m neurotwin.cli.predict --output_dir r",
            "apptainer run --nv x.sif predict --tiers oracle | tee log",
            "docker build -t neurotwin . ; docker run neurotwin bash -c 'train.py --q'",
            "```",
            "```yaml",
            "train: {epochs: 3}",
            "```",
            "Prose with `neurotwin-data synthetic --out",
            "data/x` and `--flag` and ``train.py --q`` and `it's`.",
        ]
    )
    found = [
        (c.program, c.args, c.where)
        for c in commands_in_text(text, "doc.md", torchrun_parser=torchrun_argparser())
    ]
    assert found == [
        ("train", ["--config", "a b.yaml", "--epochs", "3"], "doc.md:3"),
        ("train", ["--seed=1"], "doc.md:5"),
        ("data", ["synthetic", "--out", "x"], "doc.md:5"),
        (
            "torchrun",
            ["--nproc_per_node=2", "--nnodes", "1", "--standalone", "--no-python"],
            "doc.md:6",
        ),
        ("train", ["--lr", "1"], "doc.md:6"),
        ("torchrun", ["--rdzv_endpoint", "h:1", "-m"], "doc.md:7"),
        ("predict", ["--output_dir", "r"], "doc.md:7"),
        ("predict", ["--tiers", "oracle"], "doc.md:8"),
    ]
    assert [(n, span) for n, span in inline_code(text)] == [
        (14, "neurotwin-data synthetic --out data/x"),
        (15, "--flag"),
        (15, "it's"),
    ]


def test_unknown_flags_detects_bad_flags_and_sub_commands():
    parser = argparse.ArgumentParser(prog="neurotwin-data")
    parser.add_argument("--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    synthetic = sub.add_parser("synthetic")
    synthetic.add_argument("--out")
    synthetic.add_argument("--mice", type=int)

    def check(*args: str) -> list[str]:
        return unknown_flags(DocCommand("data", list(args), "x:1"), parser)

    assert check("--verbose", "synthetic", "--out", "d", "--mice=3", "--out", "-1") == []
    assert check("synthetic", "--out", "d", "--seed", "3") == ["x:1: data: unknown flag --seed"]
    assert check("--out", "d", "synthetic") == ["x:1: data: unknown flag --out"]
    assert check("--verbose", "--out") == ["x:1: data: unknown flag --out"]
    assert "unknown sub-command 'allen'" in check("allen", "--out", "d")[0]


def test_docker_readme_documents_every_command():
    programs = {c.program for c in commands_in(DOCKER / "README.md")}
    assert {"train", "predict", "data", "torchrun"} <= programs, programs
    for script in sorted((DOCKER / "slurm").glob("*.sbatch")):
        assert {c.program for c in commands_in(script)} == {"torchrun", "train"}, script


@pytest.mark.parametrize("program", ["train", "predict", "data", "torchrun"])
def test_documented_flags_exist(program):
    commands = [c for f in doc_files() for c in commands_in(f) if c.program == program]
    assert commands, f"no {program} command found in {[str(f) for f in doc_files()]}"
    parser = cli_parser(program)
    if parser is None:
        pytest.skip(f"neurotwin.cli.{program} is not written yet ({len(commands)} commands wait)")
    problems = [p for c in commands for p in unknown_flags(c, parser)]
    assert not problems, "\n".join(problems)


def test_documented_presets_exist():
    """`--config configs/X.yaml` in the docs names a preset that ships with the image."""
    missing = []
    for f in doc_files():
        for c in commands_in(f):
            for flag, value in zip(c.args, c.args[1:]):
                if flag == "--config" and value.startswith("configs/"):
                    if not (REPO / value).is_file():
                        missing.append(f"{c.where}: {value}")
    if missing and not any((REPO / "configs").glob("*.yaml")):
        pytest.skip(f"no presets written yet: {missing}")
    assert not missing, missing


# ----------------------------------------------------------------------------------------------
# Dockerfile and build context
# ----------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().split("\n")
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule (without `!` exceptions, which .dockerignore does not use): a path is left
    out if it or one of its parent folders matches a pattern."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not handled here"
        regex = fnmatch.translate(pattern.strip("/").replace("**/", "\0"))
        regex = regex.replace("\0", "(?:.*/)?")
        if any(re.match(regex, p) for p in prefixes):
            return True
    return False


def test_dockerignore_keeps_data_runs_envs_and_git_out():
    patterns = dockerignore_patterns()
    for path in [
        "data/synthetic/session/data/videos/0.npy",
        "runs/demo/checkpoints/best.pt",
        "wandb/run-1/files",
        ".git/HEAD",
        ".venv/bin/python",
        ".venv-ci/bin/python",
        "src/neurotwin/__pycache__/config.cpython-311.pyc",
        ".pytest_cache/v",
        ".ruff_cache/x",
    ]:
        assert ignored(path, patterns), path
    for path in ["src/neurotwin/data/native.py", "configs/demo.yaml", "docker/entrypoint.sh"]:
        assert not ignored(path, patterns), path


def test_dockerfile_copies_what_the_context_has():
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    patterns = dockerignore_patterns()
    sources = []
    for line in text.split("\n"):
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources.extend(w for w in words[1:-1] if not w.startswith("--"))
    assert {"pyproject.toml", "src", "docker/entrypoint.sh", "train.py", "predict.py"} <= set(
        sources
    )
    for source in sources:
        if source == "README.md" and not (REPO / source).exists():
            continue  # written by the README's owner; pyproject.toml needs it to build as well
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(
        r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", base.group(1)
    )
    assert re.search(r"^USER (?!root|0\b)\S+$", text, re.M), "the image must not run as root"
    assert 'VOLUME ["/data", "/runs"]' in text
    assert 'ENTRYPOINT ["/opt/neurotwin/docker/entrypoint.sh"]' in text


def test_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' installs it)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
