"""torch.hub entrypoints: one per semask architecture, generated from the registry (`semask.list_models()`; the tiny
`test_*` architectures are left out). Each is keyword-only and calls `semask.create_model`:

    model = torch.hub.load("<owner>/semask", "semask_swin_tiny_fpn", pretrained=True)   # ADE20K weights
    model = torch.hub.load("<owner>/semask", "semask_swin_tiny_fpn", weights="cityscapes", pretrained=True)
    model = torch.hub.load(repo_dir, "semask_swin_tiny_fpn", source="local", pretrained="./converted_folder")
"""

from semask.registry import create_model as _create_model
from semask.registry import list_models as _list_models

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]


def _entrypoint(arch: str):
    tags = [n.partition(".")[2] for n in _list_models(f"{arch}.*", include_tags=True)]

    def entrypoint(*, pretrained=False, weights: str | None = None, num_classes: int | None = None, **overrides):
        name = f"{arch}.{weights}" if weights else arch
        return _create_model(name, pretrained=pretrained, num_classes=num_classes, **overrides)

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__doc__ = (
        f"semask `{arch}`.\n\n"
        "Args:\n"
        "    pretrained: False; True (published weights of `weights`, pinned revision, sha256-checked); "
        "'hf-hub:owner/repo@revision'; a local model.safetensors / folder; or an original .pth checkpoint.\n"
        f"    weights: tag of the weights and config: {tags or 'none'} (default with pretrained=True: the first "
        "released tag, ADE20K).\n"
        "    num_classes: re-initialise only the class-dependent layers for this many classes.\n"
        "    overrides: ModelConfig fields, or pretrained_backbone=True for ImageNet-initialised fine-tuning.\n")
    return entrypoint


for _arch in _list_models():
    if not _arch.startswith("test_"):
        globals()[_arch] = _entrypoint(_arch)
