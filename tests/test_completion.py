"""``torro completion SHELL``: the scripts a shell loads for tab completion.

The bash script is loaded into a real bash, which then completes command
lines the way it would on a TAB press: it sets COMP_WORDS and
COMP_CWORD and calls the completion function, which runs the installed
``torro`` to ask for the candidates.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest


if TYPE_CHECKING:
    from runner import Torro


def bash_completes(
    torro: "Torro", script: Path, *words: str
) -> list[str]:
    """Return what bash offers for the last of ``words`` (the word under
    the cursor) after loading ``script``."""
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to test its completion"
    words_array = " ".join(f"'{word}'" for word in words)
    program = (
        f"source {script} && "
        f"COMP_WORDS=({words_array}) && COMP_CWORD={len(words) - 1} && "
        '_torro_completion torro && printf "%s\\n" "${COMPREPLY[@]}"'
    )
    environ = torro.env(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}"
        f"{os.environ.get('PATH', '')}"
    )
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", program],
        cwd=torro.cwd, env=environ, capture_output=True, text=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout.split()


def test_bash_completes_commands_and_arguments(torro: "Torro") -> None:
    """The bash script registers a completion for torro that offers
    "daemon" for "dae", the three commands starting with "st" under
    daemon, and the shells for the completion command itself."""
    printed = torro.run("completion", "bash", script=True)
    assert (printed.code, printed.stderr) == (0, "")
    assert "complete -o nosort -F _torro_completion torro" in printed.stdout
    script = torro.cwd / "torro.bash"
    script.write_text(printed.stdout)

    assert bash_completes(torro, script, "torro", "dae") == ["daemon"]
    assert bash_completes(torro, script, "torro", "daemon", "st") == [
        "start", "status", "stop",
    ]
    assert bash_completes(torro, script, "torro", "completion", "") == [
        "bash", "zsh", "fish",
    ]
    assert bash_completes(torro, script, "torro", "nothing") == []


def test_zsh_script_and_its_protocol(torro: "Torro") -> None:
    """The zsh script defines and registers _torro_completion; what it
    asks torro for (the zsh_complete protocol: type, value, help per
    candidate) names the daemon group and its help line."""
    printed = torro.run("completion", "zsh")
    assert (printed.code, printed.stderr) == (0, "")
    assert printed.stdout.startswith("#compdef torro\n")
    assert "_TORRO_COMPLETE=zsh_complete torro" in printed.stdout
    assert "compdef _torro_completion torro" in printed.stdout

    answered = torro.run(env={
        "COMP_WORDS": "torro dae", "COMP_CWORD": "1",
        "_TORRO_COMPLETE": "zsh_complete",
    }, script=True)
    assert (answered.code, answered.stderr) == (0, "")
    assert answered.stdout.splitlines() == [
        "plain", "daemon", "Run and control the rotation daemon.",
    ]


ZSH = shutil.which("zsh")


@pytest.mark.skipif(ZSH is None, reason="zsh is not installed")
def test_zsh_parses_its_script(torro: "Torro") -> None:
    printed = torro.run("completion", "zsh")
    script = torro.cwd / "_torro"
    script.write_text(printed.stdout)
    checked = subprocess.run(
        [str(ZSH), "-n", str(script)], capture_output=True, text=True,
        timeout=30,
    )
    assert (checked.returncode, checked.stderr) == (0, "")


@pytest.mark.parametrize("args", [("tcsh",), ("",), ("bash", "zsh")])
def test_an_unknown_shell_is_one_line_and_exit_2(
    torro: "Torro", args: tuple[str, ...]
) -> None:
    outcome = torro.run("completion", *args)
    assert outcome.code == 2
    assert outcome.stdout == ""
    assert len(outcome.error_lines) == 1, outcome.stderr
    assert outcome.error_lines[0].startswith("torro: error: ")
    assert outcome.error_lines[0].endswith(
        " (see torro completion --help)"
    )
    if args[:1] == ("tcsh",):
        assert outcome.error_lines[0] == (
            "torro: error: unknown shell 'tcsh': choose bash, zsh or fish "
            "(see torro completion --help)"
        )
