"""``python -m necktool`` and the ``necktool`` console script."""

import sys


def run() -> None:
    """Entry point. An interrupt while the CLI is still loading, or one that lands in the
    instants after the CLI has handled its own (while it restores the signal handlers and
    exits), is an interrupt too: exit 130, never Python's death by SIGINT."""
    try:
        from necktool.cli import main

        main()
    except KeyboardInterrupt:
        if "necktool.cli.interrupts" in sys.modules:
            sys.modules["necktool.cli.interrupts"].report()
        else:
            sys.stderr.write("necktool: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
