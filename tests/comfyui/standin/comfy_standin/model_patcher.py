"""ModelPatcher as the nodes use it (tests only): clones share the model, not the options."""
import copy


class BaseModel:
    def __init__(self, diffusion_model, model_sampling):
        self.diffusion_model, self.model_sampling = diffusion_model, model_sampling


class HunyuanVideo(BaseModel):
    pass


class ModelPatcher:
    def __init__(self, model):
        self.model = model
        self.model_options = {"transformer_options": {}}
        self.wrappers = {}  # {type: {key: [wrapper, ...]}}, merged into the options when sampling starts

    def clone(self):
        other = ModelPatcher(self.model)
        other.model_options = copy.deepcopy(self.model_options)
        other.wrappers = {k: {key: list(ws) for key, ws in v.items()} for k, v in self.wrappers.items()}
        return other

    def add_wrapper_with_key(self, kind, key, wrapper):
        self.wrappers.setdefault(kind, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, kind, key):
        self.wrappers.get(kind, {}).pop(key, None)

    def get_wrappers(self, kind, key):
        return self.wrappers.get(kind, {}).get(key, [])

    def get_model_object(self, name):
        return getattr(self.model, name)
