"""genmodels: generative model families in pure PyTorch, behind one small protocol.

>>> import genmodels
>>> model = genmodels.build("made", input_shape=(1, 28, 28), hidden_sizes=(500,))
>>> x = model.sample(4)                      # (4, 1, 28, 28) in {0, 1}
>>> model.log_prob(x)                        # (4,) nats, exact
"""

# Importing a family module registers it.
from . import (  # noqa: F401
    aae,
    avb,
    captionvae,
    cyclegan,
    dbm,
    fvsbn,
    gan,
    gsn,
    m2vae,
    made,
    nade,
    nextframe,
    pix2pix,
    pixelcnn,
    rbm,
    realnvp,
    ssgan,
    unit,
    vae,
)
from .base import (
    CAPABILITIES,
    BaseConfig,
    Capability,
    Condition,
    GenerativeModel,
    ImputeResult,
    MaskError,
    NoLikelihoodError,
    ScoreResult,
    SearchSpec,
    build,
    families,
    family_class,
    from_export,
    make_config,
    set_latent_temperature,
)

__all__ = [
    "CAPABILITIES",
    "BaseConfig",
    "Capability",
    "Condition",
    "GenerativeModel",
    "ImputeResult",
    "MaskError",
    "NoLikelihoodError",
    "ScoreResult",
    "SearchSpec",
    "build",
    "families",
    "family_class",
    "from_export",
    "make_config",
    "set_latent_temperature",
]
__version__ = "0.1.0"
