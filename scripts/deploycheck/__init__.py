"""Checks the Kubernetes manifests in deploy/ against the agent they deploy.

`scripts/check-deploy.sh` is the entry point: it builds or finds the binary, asks it for its
interface (`ghostwire-backup reference --json`: commands, flags, environment variables and
metrics) and runs `python -m deploycheck`, which

1. renders every variant (`kubectl kustomize`), plus the overlay layouts docs/kubernetes.md
   recommends, the design document's green release (StatefulSet `ghostwire-green` in namespace
   `ghostwire-green`) through the sidecar component and through the Flux HelmRelease's own
   post-renderer patches;
2. validates each render with `kubernetes-validate --strict` for each Kubernetes version;
   only the CRD kinds we expect may lack a schema;
3. checks what the validator cannot see (`checks.py`): the CRD fields we rely on, the agent's
   contract (its commands, flags, environment variables, mounts, probes and metrics, all as
   the binary states them), that every rendered Ghostwire StatefulSet carries the agent,
   that the backup CronJob never comes with the sidecar, that only prune runs as the
   delete-capable ServiceAccount, that every alert has `for:` and a runbook anchor that
   exists in docs/kubernetes.md, cross-variant references, and the security settings of every
   container of every workload. No Secret may be rendered.
"""
