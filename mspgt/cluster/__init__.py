"""Running sweeps on a Slurm cluster: pre-flight checks, a bounded wait on the jobs, the sweep summary.

- `slurm.py`: Slurm client commands with timeouts, and parsers of their output;
- `preflight.py`: before any job is submitted, the launcher's request is checked against the partition;
- `watchdog.py`: while the sweep waits, jobs that can never run or that Slurm killed end the wait;
- `summary.py`: after the sweep, every job's results.json in one side-by-side table (markdown, JSON, W&B);
- `callbacks.py`: the Hydra callbacks that hook these into `python -m mspgt.run -m ...`.
"""
