"""The ``gearproto`` command: one entry point for every tool in the distribution.

Subcommands are imported only when used, so ``gearproto admin`` never loads the
server and the core stays free of I/O imports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> (module, function, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "server": ("gearproto.server.cli", "main", "run the job server (gearmand-compatible options)"),
    "submit": ("gearproto.bindings.cli", "submit_main", "submit a job and print its result"),
    "worker": ("gearproto.bindings.cli", "worker_main", "run a command for every job"),
    "admin": ("gearproto.bindings.cli", "admin_main", "send admin commands (like gearadmin)"),
    "fuzz": ("gearproto.fuzz.cli", "main", "fuzz-test a Gearman server"),
    "demo": ("gearproto.demo", "main", "one job through the sans-IO core, in memory"),
}


def _usage() -> str:
    lines = ["usage: gearproto <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in _COMMANDS.items()]
    lines += ["", "Run 'gearproto <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from ._version import __version__

        print(f"gearproto {__version__}")
        return 0
    name = args[0]
    if name not in _COMMANDS:
        print(f"gearproto: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = _COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(
                f"gearproto: the {name!r} command is not available in this build", file=sys.stderr
            )
            return 2
        raise
    entry: Callable[[list[str]], int] = getattr(module, function_name)
    return entry(args[1:])


if __name__ == "__main__":
    sys.exit(main())
