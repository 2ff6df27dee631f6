"""The lifecycle policies, one per module, each pure and table-tested (JobSet's layout).

pods       reading pod and Job objects: phase, exit code, disruption, the pod-level cause
inputs     chaining: resolve fromJob inputs from upstream status, or say why we wait
restart    what ended an attempt, and whether the gang restarts or the job fails
startup    startupDeadlineSeconds: a gang that never got all its pods Running fails with the cause
deadline   activeDeadlineSeconds across all attempts
suspend    suspend deletes the pods and keeps status; resume starts a new attempt
ttl        ttlSecondsAfterFinished deletes the job object
output     status.output (URI, digest, final metrics) from rank 0's termination message
kueue      a queued attempt: why Kueue holds it, and whether its eviction restarts the gang

decide.py strings them together, in named steps; none of them talks to a cluster.
"""
