"""Floor 2, what the trainer and the serving nodes share: the ranker, featurization, scoring, the
weight policy and the snapshot codec with their configs. Imports only ``base`` and ``schemas``;
never training code (optimizers, critic, replay buffer)."""
