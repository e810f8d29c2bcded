"""The Celery worker: thin tasks that claim a job, call ``grft_core`` and record state and artifacts.

``domain.jobs.lifecycle`` holds the job-state transitions (compare-and-set, fenced by the lease token),
``worker.runner`` what a task does, ``worker.datasets`` the local copies of a job's data,
``worker.progress`` the trainer callbacks, ``worker.reconcile`` the repair of lost messages and dead
workers; ``worker.tasks`` only binds them to task names.
The API never imports this package: it publishes tasks by name.
"""
