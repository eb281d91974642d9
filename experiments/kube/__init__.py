"""The kubernetes runtime's side of the chaos activities: the same faults as on the local and
containers runtimes (a replica killed, the PostgreSQL primary and a Redis master lost, a
network toxic), acted through the Kubernetes API and chaosk8s, plus what only a cluster has (a
node drained). The activities under `experiments/activities/` choose this backend from the
settings' runtime; nothing here is an activity itself."""
