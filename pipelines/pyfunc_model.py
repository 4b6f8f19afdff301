"""The MLflow pyfunc for every genmodels model (logged as *models from code*: no pickle).

``predict`` takes a batch in the data space, ``(N, D)`` flat or ``(N, *input_shape)``, as a NumPy
array or a DataFrame, and returns the per-example log-likelihood in nats (exact or estimated,
as the model's registered ``method`` says), computed with a fixed generator so it is repeatable.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch


class GenerativeModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipelines.registry import load_model_files

        self.model, self.meta = load_model_files(
            context.artifacts["weights"], context.artifacts["spec"]
        )

    def predict(self, context, model_input, params=None):
        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        x = torch.from_numpy(x).reshape(len(x), *self.model.input_shape)
        seed = int((params or {}).get("seed", 0))
        with torch.no_grad():
            lp = self.model.log_prob(x, generator=torch.Generator().manual_seed(seed))
        return lp.numpy()


mlflow.models.set_model(GenerativeModelPyfunc())
