"""paperec: learner.

Model code (safe for serving): batch, features, objectives, ranker, policy, scoring.
Training code (never imported by serving): mgda, grads, ddpg, paperec. See docs/learner.md.
Nothing is imported here, so ``import model.scoring`` loads no training code.
"""
