"""`python -m load_tests soak`: a bounded run at a share of measured capacity with faults injected.

- `plan.py`: the typed `SoakConfig` and when each fault happens (pure);
- `traffic.py`: the capacity ramp and the Poisson load, every request bounded by a deadline;
- `ray_control.py`: the cluster side through Ray (start the app, find/kill replicas, redeploy, RSS);
- `verdict.py`: outcomes attributed to faults, the report and its pass/fail against the targets (pure);
- `command.py`: the CLI that ties them together.
"""
