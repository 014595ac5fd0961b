"""Training: the config, the loop, losses, checkpoints, hyper-parameter search, and what is fitted after.

- `config`: `TrainConfig` (one typed config, built once from the command line or a recipe);
- `loop`: `train(cfg)`, the whole run from split to model folder;
- `losses`, `checkpoint`, `tuning` (Optuna);
- `fit_features`: after training, the out-of-distribution statistics and the similar-cases index
  (`skinlesion fit-features`).
"""
