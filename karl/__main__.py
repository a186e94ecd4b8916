"""``python -m karl COMMAND ...``: every console script of the package behind one entry point.

``python -m karl --help`` lists the commands; ``python -m karl COMMAND --help`` shows one.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function, one-line summary); the console script of each is karl-<command>
COMMANDS = {
    "train": ("karl.cli", "train_main", "train a model (stages 0, 1, 2); resumable"),
    "eval": ("karl.evaluate", "main", "evaluate a checkpoint: fixed/variable regimes, search baselines"),
    "complexity": ("karl.complexity", "main", "score images: KC-hat per image and epsilon into a CSV"),
    "convert-official": ("karl.official", "main", "convert an authors' .pth into a release directory"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}   (karl-{name})" for name, (_, _, summary) in COMMANDS.items()]
    return ("usage: python -m karl COMMAND [ARGS...]\n\nKARL: single-pass adaptive image tokenization.\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n`python -m karl COMMAND --help` for a command's options.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"python -m karl: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[argv[0]]
    entry = getattr(importlib.import_module(module), func)
    sys.argv[0] = f"karl-{argv[0]}"
    return int(entry(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
