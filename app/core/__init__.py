"""The domain core that the API and the worker share: settings, database and models, the
job spec, dataset files, and the one owner of job and lease state changes (`lifecycle`).

Nothing here imports FastAPI, Celery, worker/ or TensorFlow (import-linter checks it)."""
