"""`bertfit sweep`: hyperparameter search on Optuna (space, study and trials, report)."""

# Set for a trial run on several processes (`bertfit sweep --nproc N`): the study and trial its writing rank reports to.
SWEEP_TRIAL = "BERTFIT_SWEEP_TRIAL"
# Set for the workers `bertfit sweep --workers K` starts, when the command created the study: the seed of the worker's
# sampler (the starting worker's plus the worker's number): each worker's proposals repeatable, and no two alike.
SWEEP_SEED = "BERTFIT_SWEEP_SEED"
