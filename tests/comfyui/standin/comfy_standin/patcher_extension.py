"""Wrappers as ComfyUI runs them: a list per type, each wrapper gets an executor to call the next one."""


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    DIFFUSION_MODEL = "diffusion_model"


def get_all_wrappers(kind, transformer_options):
    return [w for ws in transformer_options.get("wrappers", {}).get(kind, {}).values() for w in ws]


class WrapperExecutor:
    def __init__(self, original, class_obj, wrappers, index=0):
        self.original, self.class_obj, self.wrappers, self.index = original, class_obj, list(wrappers), index

    @classmethod
    def new_class_executor(cls, original, class_obj, wrappers):
        return cls(original, class_obj, wrappers)

    def __call__(self, *args, **kwargs):  # what a wrapper calls: the next wrapper, or the original
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.index + 1).execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        if self.index >= len(self.wrappers):
            return self.original(*args, **kwargs)
        return self.wrappers[self.index](self, *args, **kwargs)
