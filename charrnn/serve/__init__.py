"""`charrnn serve`: trained runs behind a local web page and JSON API (issue 27).

    engine.py    a run held in memory: probabilities, score, activations, generation (NumPy)
    features.py  features of a text per character and the units that correlate with them
    limits.py    the limits of a request and the checks of its fields (RequestError: 4xx)
    app.py       the Starlette application: the routes, errors as JSON, 429 past the limits
    page.py      the page (static/: HTML, CSS, JS inlined into one file, no network needed)

Only app.py imports the web stack (the optional extra `charrnn[serve]`: Starlette, uvicorn);
the rest needs NumPy alone, so `charrnn activations` works without the extra.
"""
