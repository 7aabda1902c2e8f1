"""Checks the Kubernetes manifests in deploy/ against the agent they deploy.

`scripts/check-deploy.sh` is the entry point: it builds or finds the binary, asks it for its
interface (`ghostwire-backup reference --json`: commands, flags, environment variables and
metrics) and runs `python -m deploycheck`, which

1. renders every variant (`kubectl kustomize`), plus the overlay layouts docs/kubernetes.md
   recommends, the design document's green release (StatefulSet `ghostwire-green` in namespace
   `ghostwire-green`) through the sidecar component and through the Flux HelmRelease's own
   post-renderer patches, and the chart stand-in with its claim template (`signal-data`)
   renamed, to see the agent follow it;
2. validates each render with `kubernetes-validate --strict` for each Kubernetes version;
   only the CRD kinds we expect may lack a schema;
3. checks what the validator cannot see (`checks.py`): the CRD fields we rely on, the agent's
   contract (its commands, flags, environment variables, mounts, probes and metrics, all as
   the binary states them), that every rendered Ghostwire StatefulSet carries the agent on
   the volume Signal's container mounts and the lease probe on Signal's container, that only
   the sidecar gets an API token and its Role reaches its own pod alone, that the grace
   period is Signal's stop + the final deadline + margin,
   that the backup CronJob never comes with the sidecar, that only prune runs as the
   delete-capable ServiceAccount, that every alert has `for:` and a runbook anchor that
   exists in docs/kubernetes.md, cross-variant references, and the security settings of every
   container of every workload. Keys go only where they are used: the age identity to the
   commands that decrypt, the signing key Secret to the commands that sign (the sidecar's
   `run`, the CronJob's `backup`) and nowhere else, the public GWB_VERIFY_KEY to every command
   that reads snapshots; nothing deploys GWB_ALLOW_UNSIGNED. No Secret may be rendered.
"""
