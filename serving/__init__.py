"""Online scoring: the BentoML service and its HTTP contract.

- :mod:`serving.schemas`: request/response models, the HTTP contract.
- :mod:`serving.service`: the BentoML service that reads the Feast online store and
  calls the pure scoring path of :mod:`core.scoring` with the models
  :mod:`core.model_manager` keeps current (``bentoml serve
  serving.service:ScoringService``).
- :mod:`serving.collector`: ``POST /events``, events over HTTP into Kafka.
"""

import os as _os

# LightGBM's OpenMP threads otherwise spin-wait after each parallel TreeSHAP call,
# holding a core the other worker process and Redis need; passive waiting costs
# nothing measurable here. Must be set before libgomp starts (first LightGBM
# import), which is why it lives in the package's __init__.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
