"""`python -m relay ...` runs the same command as the `relay` console script."""

from relay.cli.root import main

if __name__ == "__main__":
    main()
