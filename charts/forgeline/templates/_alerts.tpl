{{/*
The alert rules, as a plain `groups:` document (prometheusrule.yaml wraps it; tests/chart extracts it
for promtool). Operator series come from the ServiceMonitor (job "<fullname>-metrics"); trainer
series from the PodMonitor, with the target labels namespace, forgeline_job, kind and attempt.
Every expression runs on Prometheus 2.x (no 3.x-only syntax).
*/}}
{{- define "forgeline.alertGroups" -}}
{{- $a := .Values.monitoring.prometheusRule.alerts }}
{{- $job := include "forgeline.metricsJob" . }}
{{- $ns := .Release.Namespace }}
groups:
  - name: forgeline.training
    rules:
      - alert: ForgelineJobStuckPending
        # The operator's gauge has no job name (unbounded cardinality); a kind that has had a job in
        # Created or Restarting (attempt made, pods not all running) without a break for this long.
        expr: sum by (namespace, kind) (forgeline_operator_jobs{state=~"Created|Restarting"}) > 0
        for: {{ $a.stuckPendingMinutes }}m
        labels:
          severity: warning
        annotations:
          summary: {{`'{{ $labels.kind }} jobs have been waiting for their pods'`}}
          description: {{ printf "'At least one %s has had pods not Running for %d minutes: check `kubectl get llmjobs -A` and the Running condition (Unschedulable, ImagePullBackOff, a Kueue queue).'" "{{ $labels.kind }}" (int $a.stuckPendingMinutes) }}
      - alert: ForgelineJobNoProgress
        # rank 0 sets forgeline_last_step_timestamp_seconds after every optimizer step; a live target
        # whose timestamp stands still is a hung gang (an NCCL hang, a stalled data loader).
        expr: time() - max by (namespace, forgeline_job, kind, stage) (forgeline_last_step_timestamp_seconds) > {{ mul (int $a.noProgressMinutes) 60 }}
        for: 2m
        labels:
          severity: critical
        annotations:
          summary: {{`'{{ $labels.kind }} {{ $labels.namespace }}/{{ $labels.forgeline_job }} makes no progress'`}}
          description: {{ printf "'No optimizer step for more than %d minutes while rank 0 is up: the gang may be hung (NCCL, storage, data). Look at the pods'' logs; deleting the attempt''s Job restarts the gang from its last checkpoint.'" (int $a.noProgressMinutes) }}
      - alert: ForgelineTrainingLossNaN
        expr: forgeline_train_loss != forgeline_train_loss
        for: 1m
        labels:
          severity: warning
        annotations:
          summary: {{`'{{ $labels.kind }} {{ $labels.namespace }}/{{ $labels.forgeline_job }} reports a NaN loss'`}}
          description: 'The training loss is NaN: the run diverged (learning rate, precision, bad data). It will not recover by itself.'
      - alert: ForgelineRestartsRising
        expr: sum by (namespace, kind, reason) (increase(forgeline_operator_restarts_total[1h])) > {{ $a.restartsPerHour }}
        labels:
          severity: warning
        annotations:
          summary: {{`'{{ $labels.kind }} gangs keep restarting ({{ $labels.reason }})'`}}
          description: {{ printf "'More than %d whole-gang restarts in the last hour for reason {{ $labels.reason }}: each one loses the steps since the last checkpoint. Look at the jobs'' Restarting condition and Events.'" (int $a.restartsPerHour) }}
      - alert: ForgelineJobFailed
        # Jobs that reached Failed in the last 10 minutes (the counter the operator increments once
        # per job, on the transition). Fires for 10 minutes after a failure.
        expr: sum by (namespace, kind) (increase(forgeline_jobs_finished_total{result="Failed"}[10m])) > 0
        labels:
          severity: warning
        annotations:
          summary: {{`'A {{ $labels.kind }} failed'`}}
          description: {{ printf "'%s jobs failed in the last 10 minutes. `kubectl get llmjobs -A` shows which; the Failed condition says why (a permanent exit code, backoffLimit exhausted, a deadline).'" "{{ $labels.kind }}" }}
      - alert: ForgelineHandoffSlow
        # Upstream Succeeded -> downstream's first attempt created; normally well under a second.
        expr: histogram_quantile(0.9, sum by (namespace, kind, le) (rate(forgeline_operator_stage_handoff_seconds_bucket[30m]))) > {{ $a.handoffSlowSeconds }}
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: {{`'Stage hand-offs to {{ $labels.kind }} are slow'`}}
          description: {{ printf "'The 90th percentile of the time from an upstream job succeeding to its downstream %s starting is above %v s: the operator may be overloaded (see forgeline_operator_reconcile_duration_seconds) or the downstream waits on admission.'" "{{ $labels.kind }}" $a.handoffSlowSeconds }}
  - name: forgeline.operator
    rules:
      - alert: ForgelineOperatorDown
        # Down (scrapes fail) or gone (no target at all: the Deployment or the ServiceMonitor is missing).
        expr: |-
          max by (job, namespace) (up{job="{{ $job }}", namespace="{{ $ns }}"}) < 1
            or absent(up{job="{{ $job }}", namespace="{{ $ns }}"})
        for: {{ $a.operatorDownMinutes }}m
        labels:
          severity: critical
        annotations:
          summary: 'The forgeline operator is down'
          description: {{ printf "'Prometheus has not scraped the forgeline operator (job %s in namespace %s) for %d minutes: no job is reconciled, restarted or handed off. Check `kubectl -n %s get pods,events`.'" $job $ns (int $a.operatorDownMinutes) $ns }}
      - alert: ForgelineNoLeader
        # Replicas are scraped but none holds the Lease: nothing reconciles (lease RBAC, API errors).
        expr: |-
          max by (job, namespace) (forgeline_operator_leader{job="{{ $job }}", namespace="{{ $ns }}"}) < 1
        for: {{ $a.operatorDownMinutes }}m
        labels:
          severity: critical
        annotations:
          summary: 'No forgeline operator replica leads'
          description: {{ printf "'The forgeline operator (job %s in namespace %s) is up but no replica has held its Lease for %d minutes: no job is reconciled. Look at the replicas'' logs for lease errors (`kubectl -n %s logs -l app.kubernetes.io/component=operator`).'" $job $ns (int $a.operatorDownMinutes) $ns }}
      - alert: ForgelineReconcileErrors
        expr: |-
          sum by (namespace, kind) (rate(forgeline_operator_reconcile_errors_total[10m]))
            / sum by (namespace, kind) (rate(forgeline_operator_reconcile_total[10m])) > {{ $a.reconcileErrorRatio }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{`'Reconciling {{ $labels.kind }} fails'`}}
          description: {{ printf "'More than %v of the reconcile passes of %s fail: look at the operator''s log (an RBAC denial, an API error, an invalid object).'" $a.reconcileErrorRatio "{{ $labels.kind }}" }}
{{- end }}
