"""`bertfit sweep`: hyperparameter search on Optuna (space, study and trials, report)."""

# Set for a trial run on several processes (`bertfit sweep --nproc N`): the study and trial its writing rank reports to.
SWEEP_TRIAL = "BERTFIT_SWEEP_TRIAL"
