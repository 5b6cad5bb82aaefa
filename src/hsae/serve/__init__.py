"""`hsae serve`: the local feature explorer of a run folder (see `hsae.serve.app`).

Needs the `app` extra (FastAPI, uvicorn); nothing here is imported by the package's other layers.
"""
