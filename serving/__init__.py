"""Online scoring: the BentoML service, its HTTP schemas and the scoring path.

- :mod:`serving.schemas`: request/response models, the HTTP contract.
- :mod:`serving.scoring`: pure functions from stored features to segment,
  propensity and TreeSHAP explanation (no I/O).
- :mod:`serving.service`: the BentoML service that reads the Feast online store and
  calls them (``bentoml serve serving.service:ScoringService``).
"""

import os as _os

# LightGBM's OpenMP threads otherwise spin-wait after each parallel TreeSHAP call,
# holding a core the other worker process and Redis need; passive waiting costs
# nothing measurable here. Must be set before libgomp starts (first LightGBM
# import), which is why it lives in the package's __init__.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
