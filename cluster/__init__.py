"""Running alignray on a Ray cluster: submit a workflow as a Ray job (`alignray.cluster.submit`),
start a one-node loopback cluster owned by a handle (`alignray.cluster.local_cluster`), and read what
the shipped manifests provide (`alignray.cluster.manifests`)."""
