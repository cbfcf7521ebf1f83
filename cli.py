"""`python cli.py ...` from a source checkout: the charrnn command (charrnn/cli/). Not installed."""
from charrnn.cli import main

if __name__ == "__main__":
    main()
