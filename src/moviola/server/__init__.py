"""The Moviola server: OpenAI's Videos API on your own machine, backed by a job queue in a database.

    moviola keys create --name alice              # prints the key once
    moviola serve --port 8000 --workers 1          # API + studio at http://127.0.0.1:8000/

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)
    video = client.videos.create_and_poll(prompt="a small red circle moves right", size="64x64", seconds="2")

Modules, one concept each:

- ``db``: one connection type for SQLite (WAL, the default) and PostgreSQL (by URL), the schema.
- ``keys``: API keys (stored as SHA-256 hashes), quotas, rate limits, the audit log.
- ``jobs``: the job table as the Videos API sees it (create, list, delete) and as workers see it
  (claim with a lease, heartbeat, complete, fail), plus the expiry sweep.
- ``storage``: where uploads and outputs live on disk; every write atomic.
- ``generate``: the only place that talks to the model: request limits, size mapping, and the adapter
  that runs text-to-video, image-to-video, remix, extension and edit through ``Pipeline``.
- ``worker``: the process that claims jobs and runs them (``moviola worker``).
- ``app``: the FastAPI application (``moviola serve``), errors shaped like OpenAI's, the studio;
  ``schemas``: its request and response models.

The API's modules never import torch or load the model (only ``worker`` and ``generate.run_job`` do),
so request handling stays a few milliseconds of Python while the workers use the CPU.
"""
