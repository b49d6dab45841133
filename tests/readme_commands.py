"""The commands and the Python example of README.md, read from the file itself, so that what CI
runs (.ci/run) and what the tests check is exactly what a reader copies.

Also a small command line, used by .ci/run (standard library only, runs with any python3):

    python3 tests/readme_commands.py command "Run the server"    # the command after that text
    python3 tests/readme_commands.py python-snippet --port 41234  # the example, on another port
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_LANGUAGES = {"sh", "shell", "bash", "console"}
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")  # fences may be indented (in a list item)
EXAMPLE_ADDRESS = re.compile(r'MosaicoClient\.connect\("127\.0\.0\.1", 6726\)')


@dataclass(frozen=True)
class Block:
    language: str
    body: str
    preceding: str  # the Markdown text between the previous fence and this one


def blocks(path: Path = README) -> list[Block]:
    """Every fenced code block of a Markdown file, with the text just before it."""
    found: list[Block] = []
    text_since_last: list[str] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            text_since_last.append(lines[i])
            i += 1
            continue
        indent = len(m.group(1))
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            line = lines[i]
            body.append(line[indent:] if line[:indent] == " " * indent else line.lstrip())
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}: unclosed code block")
        found.append(Block(m.group(2).lower(), "\n".join(body), "\n".join(text_since_last)))
        text_since_last = []
        i += 1
    return found


def strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a `#` outside quotes, after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands_of(block: Block) -> list[str]:
    """The commands of a shell block: one per line (backslash continuations joined), no comments."""
    out: list[str] = []
    pending = ""
    for raw in block.body.splitlines():
        line = strip_comment(raw)
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line.strip()).strip()
        pending = ""
        if line:
            out.append(line)
    return out


def shell_commands(path: Path = README) -> list[str]:
    return [c for b in blocks(path) if b.language in SHELL_LANGUAGES for c in commands_of(b)]


def command_after(marker: str, path: Path = README) -> str:
    """The one command of the first shell block whose preceding text contains `marker`."""
    for b in blocks(path):
        if b.language in SHELL_LANGUAGES and marker in b.preceding:
            cmds = commands_of(b)
            if len(cmds) != 1:
                raise ValueError(f"the block after {marker!r} holds {len(cmds)} commands, expected one")
            return cmds[0]
    raise ValueError(f"no shell block after a text containing {marker!r} in {path.name}")


def python_snippet(port: int | None = None, path: Path = README) -> str:
    """The README's Python example; with `port`, connecting to that loopback port instead."""
    snippets = [b.body for b in blocks(path) if b.language == "python"]
    if len(snippets) != 1:
        raise ValueError(f"{path.name} holds {len(snippets)} Python blocks, expected one")
    code = snippets[0]
    if port is not None:
        code, n = EXAMPLE_ADDRESS.subn(f'MosaicoClient.connect("127.0.0.1", {port})', code)
        if n != 1:
            raise ValueError('the Python example must connect with MosaicoClient.connect("127.0.0.1", 6726)')
    return code + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("command", help="print the command of the shell block after MARKER")
    c.add_argument("marker")
    s = sub.add_parser("python-snippet", help="print the Python example")
    s.add_argument("--port", type=int)
    args = p.parse_args(argv)
    try:
        if args.what == "command":
            print(command_after(args.marker))
        else:
            print(python_snippet(args.port), end="")
    except ValueError as exc:
        print(f"readme_commands: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
