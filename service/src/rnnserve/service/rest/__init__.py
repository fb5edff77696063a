"""The HTTP/REST front end: the REST API (app.py), its JSON conversion (converter.py) and
the uvicorn server that runs it in the server's event loop (frontend.py)."""
