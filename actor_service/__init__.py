"""paperec actor service: serving nodes that rank candidate lists with the current actor snapshot.

``paperec serve`` runs one node (:mod:`actor_service.cli`). The package imports model code only
(``model.scoring``, ``model.featurize``, ``model.snapshot`` and the ranker/policy modules
they use), never the trainer. See docs/serving.md.
"""
