"""Online scoring: the BentoML service, its HTTP schemas and the scoring path.

- :mod:`serving.schemas`: request/response models, the HTTP contract.
- :mod:`serving.scoring`: pure functions from stored features to segment,
  propensity and TreeSHAP explanation (no I/O).
- :mod:`serving.service`: the BentoML service that reads the Feast online store and
  calls them (``bentoml serve serving.service:ScoringService``).
"""
