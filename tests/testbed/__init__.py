"""forgeline's test infrastructure: a real Kubernetes control plane with fake GPU nodes and a
process node, an S3 server and Prometheus, all on 127.0.0.1 and all stopped with the session.

launcher     etcd + kube-apiserver + controller-manager + scheduler + kwok (``python -m testbed.launcher``)
processnode  a node agent that runs pods' containers as local processes
kube         small helpers for tests: waiting on conditions, namespaces, applying CRDs
s3           a seaweedfs S3 server with access keys enforced
prometheus   Debian's Prometheus and promtool
procs        how every child process is started and, whatever happens, stopped
builders     job objects, batch Jobs, pods and Observed snapshots for unit tests (plain dicts)
fakecluster  an in-memory ClusterPort and a Reconciler harness for unit tests
"""
