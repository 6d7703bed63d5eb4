"""``python -m necktool`` and the ``necktool`` console script."""

import sys


def run() -> None:
    """Entry point: an interrupt while the CLI is still loading is an interrupt too."""
    try:
        from necktool.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("necktool: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
