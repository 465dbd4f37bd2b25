"""`banaserve` command line: one subcommand per job, each owned by the module that does it."""

from __future__ import annotations

import importlib
import sys

# subcommand -> module with `main(argv: list[str]) -> int`
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("banaserve.engine.cli", "generate text offline with one engine"),
    "make-model": ("banaserve.models.cli", "write a random checkpoint in Hugging Face format"),
    "serve": ("banaserve.serve.cli", "start an OpenAI-compatible server and its instances"),
    "bench": ("banaserve.bench.cli", "replay a trace against an OpenAI-compatible endpoint"),
    "simulate": ("banaserve.sim.cli", "simulate a cluster on a cost model"),
    "profile": ("banaserve.sim.profile_cli", "measure step times of the real engine"),
}


def usage() -> str:
    lines = ["usage: banaserve <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"banaserve: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
