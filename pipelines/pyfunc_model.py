"""The MLflow pyfunc for every genmodels model (logged as *models from code*: no pickle).

``predict`` takes a batch in the data space, ``(N, D)`` flat or ``(N, *input_shape)``, as a NumPy
array or a DataFrame, and returns the per-example log-likelihood in nats (exact or estimated,
as the model's registered ``method`` says), computed with a fixed generator so it is repeatable;
with ``params={"capability": "embed"}`` it returns the embeddings ``(N, K)`` instead. The model's
capabilities are in the logged model's metadata (``mlflow.models.get_model_info(uri).metadata``)
and on the loaded model (``loaded.unwrap_python_model().capabilities``).
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
        self.capabilities = sorted(self.model.capabilities)

    def predict(self, context, model_input, params=None):
        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        x = torch.from_numpy(x).reshape(len(x), *self.model.input_shape)
        params = params or {}
        capability = params.get("capability", "log_prob")
        if capability not in ("log_prob", "embed") or capability not in self.capabilities:
            raise ValueError(
                f"capability {capability!r} is not served by predict; this model has "
                f"{', '.join(self.capabilities)} (predict serves log_prob and embed)"
            )
        with torch.no_grad():
            if capability == "embed":
                return self.model.embed(x).flatten(1).numpy()
            seed = int(params.get("seed", 0))
            lp = self.model.log_prob(x, generator=torch.Generator().manual_seed(seed))
        return lp.numpy()


mlflow.models.set_model(GenerativeModelPyfunc())
