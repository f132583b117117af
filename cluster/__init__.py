"""Running alignray on a Ray cluster: submit a workflow as a Ray job (`cluster.submit`),
start a one-node loopback cluster owned by a handle (`cluster.local_cluster`), and read what
the shipped manifests provide (`cluster.manifests`)."""
