"""What a registered version says about its uses: the capabilities tag, the MLflow model's
metadata, and the pyfunc's embed."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

import genmodels
from pipelines import registry


def test_a_versions_capabilities_travel_with_it(tracking_uri):
    torch.manual_seed(0)
    model = genmodels.build("vae", input_shape=(12,), latent_dim=2, hidden_sizes=(8,), eval_k=4)
    from_config = sorted(model.capabilities)
    model.capabilities = model.capabilities | {"condition:label"}  # an instance's own set
    exp = registry.ensure_experiment(tracking_uri, "caps")
    run_id = registry.client(tracking_uri).create_run(exp).info.run_id
    meta = {"dataset": "toy", "fingerprint": "f", "preprocessing": {}, "method": "iwae-k=4"}
    r = registry.register_model(tracking_uri, run_id, model, meta, {"val_log_prob": -1.0})
    mv = registry.resolve_version(tracking_uri, r.name, r.version)
    want = sorted(model.capabilities)
    assert json.loads(mv.tags["capabilities"]) == want and "condition:label" in want
    info = mlflow.models.get_model_info(f"models:/{r.name}/{r.version}")
    assert info.metadata["capabilities"] == want
    pyfunc = mlflow.pyfunc.load_model(f"models:/{r.name}/{r.version}")
    # the reloaded instance is rebuilt from its config (a real conditional variant's config
    # would re-create its condition capability; this hand-made one does not)
    assert pyfunc.unwrap_python_model().capabilities == from_config
    x = torch.randint(0, 2, (4, 12)).float()
    z = pyfunc.predict(x.numpy(), params={"capability": "embed"})
    assert np.allclose(z, model.eval().embed(x).detach().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="capability 'impute' is not served by predict"):
        pyfunc.predict(x.numpy(), params={"capability": "impute"})
