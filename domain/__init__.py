"""The service's kernel, shared by ``api`` and ``worker``: settings, database, ORM models and
repositories, the artifact store, ids, queue and task names, the job lifecycle and the dataset-URI
policy. It imports neither ``api`` nor ``worker``; both import it."""
