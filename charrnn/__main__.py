"""`python -m charrnn ...`: the charrnn command."""
from charrnn.entry import main

if __name__ == "__main__":
    main()
