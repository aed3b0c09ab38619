"""One run and the commands that start runs: the run top to bottom (runner), the Trainer and the method
applied (training), mid-run checkpoints, run locks (locks), training-time trackers, cost figures, config
validation, sweep preflight and status, forgetting, the pilot (`bench pilot`)."""
