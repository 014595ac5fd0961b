"""Models: the architectures, the model folder that carries one, its card, and pretrained weights.

- `architectures`: `create_model` by name (any timm architecture) and the three registered here;
- `ensemble`: several trained model folders combined into one `feature_ensemble` folder;
- `folder`: the model folder (safetensors + config.json + extras) saved, loaded and resolved from the Hub;
- `card`: the model card (README.md) rendered from the folder and its reports;
- `pretrained`: ImageNet weights from a local file, checked before training starts.

Importing this package registers `densenet201_se`, `lesion_cnn` and `feature_ensemble` with timm, so after
`import skinlesion.models` `timm.create_model("local-dir:PATH")` loads them as any timm model.
"""

from .architectures import (
    NAMED_ARCHITECTURES,
    DenseNetSE,
    LesionCNN,
    UnknownModelError,
    check_model_name,
    create_model,
)

__all__ = ["NAMED_ARCHITECTURES", "DenseNetSE", "LesionCNN", "UnknownModelError", "check_model_name", "create_model"]
