"""`bertfit sweep`: hyperparameter search on Optuna (space, study and trials, report)."""
