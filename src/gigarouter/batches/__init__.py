"""Batch jobs: OpenAI's Batch API for /v1/embeddings (docs/batches.md).

- ``files.py``   the files directory: uploads, a spool per running batch, output files
- ``tables.py``  the batch tables (migration 0005)
- ``store.py``   their queries, each scoped to the caller's account
- ``lines.py``   one line: parsed, run through the /v1/embeddings pipeline at the batch price
- ``runner.py``  the loop that claims batches, runs their lines on the bulk lane, finalizes them
- ``jobs.py``    ``BatchJobs``, what the routes call (api/routes/files.py, api/routes/batches.py)
"""
