"""ComfyUI nodes for TeaCache on HunyuanVideo, on the engine ``teacache_sample_video.py`` (nothing of ComfyUI's
code is copied: the cache wraps the blocks of ComfyUI's own ``HunyuanVideo`` for one sampling run at a time).

- ``TeaCacheHunyuanVideo``: MODEL in, a patched clone out. Its ``OUTER_SAMPLE`` wrapper attaches the cache when a
  sampling run starts (the run's sigmas, mapped by the model's ``model_sampling.timestep``, place every model call
  in its step, so Heun, DPM2 and the ancestral samplers' intermediate calls are calls of steps), and removes it in
  ``finally``: no state stays on the model. The summary goes to the log, the JSON report to
  ``output/teacache/``.
- ``TeaCacheCalibrateHunyuanVideo``: MODEL in, a clone out that samples uncached (outputs unchanged) and records
  each run into a named profile in ``models/teacache_profiles/`` (refitted after every run), tied to ComfyUI's
  model class and recording the setting (steps, sampler, scheduler, cfg, shift, resolution, frames).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import re
import sys
import time
import types
from pathlib import Path

log = logging.getLogger("teacache_hunyuanvideo")
ENGINE = "teacache_sample_video"
WRAPPER_KEY = "teacache_hunyuanvideo"  # one TeaCache wrapper per model: a later node replaces an earlier one
PROFILE_FOLDER = "teacache_profiles"
PUBLISHED = "published"


def _load_engine():
    """The engine module: the repository's file one folder up (this pack cloned or symlinked into
    ``custom_nodes``), a copy beside this file, or an installed ``teacache_sample_video``. The engine logs with
    loguru; where ComfyUI's environment lacks it, a stand-in that logs through ``logging`` is used for the engine
    only (it is not left in ``sys.modules``)."""
    if ENGINE in sys.modules:
        return sys.modules[ENGINE]
    here = Path(__file__).resolve().parent
    path = next((p for p in (here.parent / f"{ENGINE}.py", here / f"{ENGINE}.py") if p.is_file()), None)
    shim = None
    try:
        import loguru  # noqa: F401
    except ImportError:
        shim = types.ModuleType("loguru")
        shim.logger = logging.getLogger("teacache_sample_video")
        sys.modules["loguru"] = shim
    try:
        if path is None:
            return importlib.import_module(ENGINE)
        spec = importlib.util.spec_from_file_location(ENGINE, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[ENGINE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[ENGINE]
            raise
        return module
    finally:
        if shim is not None and sys.modules.get("loguru") is shim:
            del sys.modules["loguru"]


tc = _load_engine()


# -- ComfyUI's modules, imported lazily (both ComfyUI's layout and the pip-packaged one) ------------------------

def _folder_paths():
    try:
        import folder_paths
    except ImportError:
        from comfy.cmd import folder_paths
    return folder_paths


def _comfy(name: str):
    return importlib.import_module(f"comfy.{name}")


def profile_folder() -> Path:
    """``models/teacache_profiles`` (registered with ComfyUI's folder_paths on first use)."""
    fp = _folder_paths()
    if PROFILE_FOLDER not in fp.folder_names_and_paths:
        models_dir = getattr(fp, "models_dir", None)
        if models_dir is not None:
            fp.add_model_folder_path(PROFILE_FOLDER, str(Path(models_dir) / PROFILE_FOLDER))
        else:
            fp.add_model_folder_path(PROFILE_FOLDER)
    return Path(fp.get_folder_paths(PROFILE_FOLDER)[0])


def profile_names() -> list:
    try:
        profile_folder()
        return sorted(f for f in _folder_paths().get_filename_list(PROFILE_FOLDER) if f.endswith(".json"))
    except Exception as e:  # the list is for the UI: never fail a node listing over it
        log.warning(f"TeaCache: cannot list {PROFILE_FOLDER}: {e}")
        return []


def _profile_path(name: str) -> Path:
    full = _folder_paths().get_full_path(PROFILE_FOLDER, name)
    if full is None:
        raise FileNotFoundError(f"TeaCache profile {name!r} is not in {PROFILE_FOLDER}")
    return Path(full)


# -- what one sampling run is ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """One sampling run as the OUTER_SAMPLE wrapper sees it."""

    patcher: object
    transformer: object
    num_steps: int
    timesteps: list
    image_condition: object
    setting: dict

    @property
    def identity(self) -> dict:
        """What a ComfyUI profile is tied to: ComfyUI's model class and the architecture (never a CLI profile)."""
        return {"host": "comfyui", "comfyui_model": type(self.patcher.model).__name__,
                **tc.model_identity(self.transformer),
                **({"image_condition": self.image_condition} if self.image_condition else {})}


def _argument(args, kwargs, index, name):
    return args[index] if len(args) > index else kwargs.get(name)


def _scheduler_name(model_sampling, sigmas) -> str:
    """The scheduler whose sigmas these are, by recomputing each of ComfyUI's at this step count."""
    samplers = _comfy("samplers")
    steps = len(sigmas) - 1
    for name in getattr(samplers, "SCHEDULER_NAMES", []):
        try:
            other = samplers.calculate_sigmas(model_sampling, name, steps).cpu()
        except Exception:
            continue
        if other.shape == sigmas.shape and bool((other - sigmas).abs().max() <= 1e-5 * max(1.0, float(sigmas[0]))):
            return name
    return "custom"


def describe_run(executor, args, kwargs) -> Run:
    guider = executor.class_obj
    patcher = guider.model_patcher
    transformer = patcher.model.diffusion_model
    latent = _argument(args, kwargs, 1, "latent_image")
    sampler = _argument(args, kwargs, 2, "sampler")
    sigmas = _argument(args, kwargs, 3, "sigmas").detach().float().cpu()
    model_sampling = patcher.get_model_object("model_sampling")
    timesteps = [float(v) for v in model_sampling.timestep(sigmas).flatten()]
    values = [v for i, v in enumerate(timesteps) if i == 0 or v != timesteps[i - 1]]  # repeated sigmas: one step
    num_steps = len(values) - 1 if len(values) > 1 else 1
    positive = (getattr(guider, "conds", None) or {}).get("positive", [])
    if any(c.get("guiding_frame_index") is not None for c in positive):
        condition = "token_replace"  # I2V v2: the first frame's tokens replaced by the image's
    elif any(c.get("concat_latent_image") is not None for c in positive):
        condition = "concat"
    else:
        condition = tc.find_model(transformer).adapter(transformer).image_condition
    fn = getattr(sampler, "sampler_function", None)
    sampler_name = re.sub(r"^sample_", "", getattr(fn, "__name__", type(sampler).__name__))
    shape = list(getattr(latent, "shape", []))
    ratio = 16 if len(shape) == 5 and shape[1] == 32 else 8  # HunyuanVideo-1.5's VAE: 16x, 1.0's: 8x
    setting = {"steps": len(sigmas) - 1, "sampler": sampler_name, "scheduler": _scheduler_name(model_sampling, sigmas),
               "cfg": getattr(guider, "cfg", None), "shift": getattr(model_sampling, "shift", None),
               "resolution": [shape[-2] * ratio, shape[-1] * ratio] if len(shape) >= 4 else None,
               "frames": (shape[2] - 1) * 4 + 1 if len(shape) == 5 else 1,
               "image_condition": condition}
    if isinstance(setting["shift"], float):
        setting["shift"] = round(setting["shift"], 6)
    return Run(patcher, transformer, num_steps, values, condition, setting)


def attach(run: Run, config, notes: dict):
    """The cache on the run's transformer (hooks on its blocks, state on the handle only)."""
    spec = tc.find_model(run.transformer)
    if getattr(run.transformer, "_teacache", None) is not None:
        raise RuntimeError("TeaCache is already enabled on this model (outside ComfyUI's nodes); disable it first")
    if config.first_frame == "exclude" and run.image_condition != "token_replace":
        raise ValueError("TeaCache: first_frame 'exclude' is for image-to-video v2 (token replace: conditioning "
                         f"with guiding_frame_index); this run's image condition is {run.image_condition}")
    adapter = spec.adapter(run.transformer, image_condition=run.image_condition)
    cache = tc.TeaCache(run.transformer, spec, config, None, adapter)
    cache.notes.update(notes)
    cache.reset(run.num_steps, timesteps=run.timesteps)
    return cache


def _write_report(report: dict) -> Path:
    folder = Path(_folder_paths().get_output_directory()) / "teacache"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}_teacache_report.json"
    n = 1
    while path.exists():
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}_teacache_report_{n}.json"
        n += 1
    path.write_text(json.dumps(report, indent=1, default=str))
    return path


def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


# -- the nodes ---------------------------------------------------------------------------------------------------

class TeaCacheHunyuanVideo:
    """TeaCache for ComfyUI's HunyuanVideo (text-to-video, image-to-video v1 and v2, HunyuanVideo-1.5)."""

    DESCRIPTION = ("TeaCache (arXiv 2411.19108): skips the transformer blocks at steps where the first block's "
                   "modulated input barely changed, reusing the residual of the last computed step. 0.1 ~ 1.6x, "
                   "0.15 ~ 2.1x at 50 steps with the published text-to-video coefficients. Where none are published, "
                   "with skip call and rule fitted (no coefficients needed): indicator residual-rate for 1.5, "
                   "transformation-rate with warmup_steps 4 for image-to-video; or calibrate first.")
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model/teacache"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "rel_l1_thresh": ("FLOAT", {"default": 0.15, "min": 0.0, "max": 100.0, "step": 0.005,
                                            "tooltip": "0 turns caching off (bit-identical output)"}),
            },
            "optional": {
                "target_speedup": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.05,
                                             "tooltip": "> 1: pick the threshold that computes about 1/S of the "
                                                        "calls on the profile's recorded runs (needs a profile); "
                                                        "overrides rel_l1_thresh"}),
                "rule": (list(tc.RULES), {"default": tc.RULES[0]}),
                "indicator": (list(tc.INDICATORS), {"default": tc.INDICATORS[0]}),
                "skip": (list(tc.SKIPS), {"default": tc.SKIPS[0],
                                          "tooltip": "what a skipped step skips: the transformer blocks "
                                                     "(published) or the whole model call (needs indicator "
                                                     "transformation-rate or residual-rate)"}),
                "profile": ([PUBLISHED] + profile_names(), {"default": PUBLISHED,
                                                            "tooltip": "coefficients: the published "
                                                                       "text-to-video ones, or a calibration "
                                                                       "profile from models/teacache_profiles"}),
                "warmup_steps": ("INT", {"default": 1, "min": 1, "max": 1000}),
                "max_consecutive_skips": ("INT", {"default": -1, "min": -1, "max": 1000,
                                                  "tooltip": "-1: no cap"}),
                "first_frame": (list(tc.FIRST_FRAME), {"default": "include",
                                                       "tooltip": "I2V v2: whether the first frame's tokens count "
                                                                  "in the indicator"}),
            },
        }

    def patch(self, model, rel_l1_thresh, target_speedup=0.0, rule=None, indicator=None, profile=PUBLISHED,
              warmup_steps=1, max_consecutive_skips=-1, first_frame="include", skip=None):
        options = dict(rel_l1_thresh=float(rel_l1_thresh), rule=rule or tc.RULES[0],
                       indicator=indicator or tc.INDICATORS[0], skip=skip or tc.SKIPS[0],
                       warmup_steps=int(warmup_steps),
                       max_consecutive_skips=None if max_consecutive_skips is None or max_consecutive_skips < 0
                       else int(max_consecutive_skips), first_frame=first_frame)
        base = tc.TeaCacheConfig(**options)  # refuses bad values now, not at sampling time
        speedup = float(target_speedup or 0.0)
        if 0 < speedup < 1:
            raise ValueError(f"target_speedup must be 0 (off) or >= 1, got {speedup}")
        if speedup >= 1 and profile in (None, "", PUBLISHED):
            raise ValueError("target_speedup needs a calibration profile (TeaCacheCalibrateHunyuanVideo records "
                             "one): the published coefficients come without recorded runs to replay")
        tc.find_model(model.model.diffusion_model)  # refuses any other model now
        reports, chosen = [], {}  # chosen: the threshold picked per (profile file, steps), replayed once

        def outer_sample(executor, *args, **kwargs):
            run = describe_run(executor, args, kwargs)
            config, notes = base, {"host": "ComfyUI", "model": run.identity, "setting": run.setting}
            if profile not in (None, "", PUBLISHED):
                config, notes = _apply_profile(run, config, notes, profile, speedup, chosen)
            else:
                _warn_published(run, config)
            cache = attach(run, config, notes)
            try:
                return executor(*args, **kwargs)
            finally:
                try:
                    report = _json_safe(cache.report())
                    reports.append(report)
                    del reports[:-8]  # the last runs' reports (each is also written to output/teacache)
                    log.info(f"{cache.summary()} [{run.setting['sampler']}, {run.setting['scheduler']}]")
                    log.info(f"TeaCache report: {_write_report(report)}")
                except Exception as e:
                    log.warning(f"TeaCache: no report for this run: {e}")
                finally:
                    cache.disable()

        patched = model.clone()
        patched.remove_wrappers_with_key(_comfy("patcher_extension").WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
        patched.add_wrapper_with_key(_comfy("patcher_extension").WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample)
        outer_sample.reports = reports  # the last 8 runs' reports (the last one is reports[-1])
        return (patched,)


def _warn_published(run: Run, config) -> None:
    if not config.enabled:
        return
    spec = tc.find_model(run.transformer)
    if spec.coefficients is None:
        tc._warn_once(f"TeaCache: no coefficients are published for HunyuanVideo {spec.version}; using 1.0's "
                      "text-to-video ones. Calibrate first: TeaCacheCalibrateHunyuanVideo, then pick its profile.")
    elif run.image_condition:
        tc._warn_once(f"TeaCache: no coefficients are published for image-to-video ({run.image_condition}); using "
                      "the text-to-video ones. Calibrate first: TeaCacheCalibrateHunyuanVideo, then pick its profile.")


def _apply_profile(run: Run, config, notes: dict, name: str, speedup: float, chosen: dict):
    path = _profile_path(name)
    profile = tc.load_profile(path, num_steps=run.num_steps, setting=run.setting, first_frame=config.first_frame,
                              indicator=config.indicator, skip=config.skip)
    if profile["model"] != run.identity:
        raise ValueError(f"TeaCache profile {name} was recorded for {profile['model']}, this model is "
                         f"{run.identity}: record one for this model with TeaCacheCalibrateHunyuanVideo")
    if not profile.get("coefficients"):
        raise ValueError(f"TeaCache profile {name} holds too few recorded calls to fit coefficients: record more "
                         "runs (or more steps) with TeaCacheCalibrateHunyuanVideo")
    config = dataclasses.replace(config, coefficients=profile["coefficients"])
    notes = {**notes, "profile": name}
    if speedup >= 1:
        key = (str(path), path.stat().st_mtime_ns, run.num_steps, json.dumps(config.as_dict(), sort_keys=True))
        if key not in chosen:
            chosen[key] = tc.threshold_for_speedup(profile["traces"], speedup, config)
        thresh, predicted = chosen[key]
        config = dataclasses.replace(config, rel_l1_thresh=thresh)
        notes.update(target_speedup=speedup, predicted_computed_calls=predicted)
        log.info(f"TeaCache: target {speedup}x -> rel_l1_thresh {thresh:.4g} ({predicted:.1f} calls computed on the "
                 f"profile's runs)")
    return config, notes


class TeaCacheCalibrateHunyuanVideo:
    """Records uncached sampling runs into a TeaCache profile (the outputs are those of plain sampling)."""

    DESCRIPTION = ("Samples without caching and records, per model call, the indicator and the change of the "
                   "blocks' residual; after each run it refits the rescale polynomial of the named profile in "
                   "models/teacache_profiles. Record a few runs of the setting you will use (same steps), then "
                   "pick the profile in TeaCacheHunyuanVideo.")
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model/teacache"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "profile_name": ("STRING", {"default": "hunyuanvideo_comfyui"}),
            },
            "optional": {
                "first_frame": (list(tc.FIRST_FRAME), {"default": "include"}),
            },
        }

    def patch(self, model, profile_name, first_frame="include"):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(profile_name).strip()).strip("._")
        if not name:
            raise ValueError(f"profile_name {profile_name!r} has no usable characters")
        name = name if name.endswith(".json") else f"{name}.json"
        config = tc.TeaCacheConfig(rel_l1_thresh=0.0, trace=True, first_frame=first_frame)
        tc.find_model(model.model.diffusion_model)

        def outer_sample(executor, *args, **kwargs):
            run = describe_run(executor, args, kwargs)
            path = profile_folder() / name
            previous = _previous_traces(path, run, first_frame)  # refuses a mismatched profile before sampling
            cache = attach(run, config, {"host": "ComfyUI", "calibrating": name, "setting": run.setting})
            try:
                out = executor(*args, **kwargs)
                trace = cache.stats()
            finally:
                cache.disable()
            _record(path, run, previous + [trace], first_frame)
            return out

        patched = model.clone()
        patched.remove_wrappers_with_key(_comfy("patcher_extension").WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
        patched.add_wrapper_with_key(_comfy("patcher_extension").WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample)
        return (patched,)


def _previous_traces(path: Path, run: Run, first_frame: str) -> list:
    """The runs a profile already holds, as ``stats()``-like traces; refuses one of another model or step count."""
    if not path.is_file():
        return []
    profile = json.loads(path.read_text())
    if profile.get("format") != tc.PROFILE_FORMAT or profile.get("model") != run.identity \
            or profile.get("num_steps") != run.num_steps or profile.get("first_frame", "include") != first_frame:
        raise ValueError(f"TeaCache profile {path.name} holds runs of another model, step count or first_frame "
                         f"({profile.get('model')}, {profile.get('num_steps')} steps); this run: {run.identity}, "
                         f"{run.num_steps} steps. Choose another profile_name.")
    return [{"num_steps": profile["num_steps"], "rel_l1": t["rel_l1"], "residual_rel_l1": t["residual_rel_l1"],
             "steps": t.get("steps", list(range(len(t["rel_l1"])))),
             **({"pairwise": t["pairwise"]} if "pairwise" in t else {})} for t in profile["traces"]]


def _record(path: Path, run: Run, traces: list, first_frame: str) -> None:
    try:
        profile = tc.make_profile(traces, transformer=run.transformer, setting=run.setting, first_frame=first_frame)
    except ValueError as e:  # too few paired calls to fit yet: keep the runs, fit later
        log.warning(f"TeaCache calibration: {e}; the run is kept, record more")
        profile = {"format": tc.PROFILE_FORMAT, "num_steps": run.num_steps, "setting": run.setting,
                   "first_frame": first_frame, "coefficients": None,
                   "traces": [{"rel_l1": b["rel_l1"], "residual_rel_l1": b["residual_rel_l1"], "steps": b["steps"],
                               "num_steps": run.num_steps} for t in traces for b in t.get("branches", [t])]}
    profile["model"] = run.identity
    profile["runs"] = len(traces)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(profile), indent=1))
    tmp.replace(path)
    coefficients = profile["coefficients"]
    log.info(f"TeaCache calibration: {path} now holds {len(traces)} run(s)"
             + (f", coefficients {[float(f'{c:.6g}') for c in coefficients]}" if coefficients else ""))


NODE_CLASS_MAPPINGS = {
    "TeaCacheHunyuanVideo": TeaCacheHunyuanVideo,
    "TeaCacheCalibrateHunyuanVideo": TeaCacheCalibrateHunyuanVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TeaCacheHunyuanVideo": "TeaCache (HunyuanVideo)",
    "TeaCacheCalibrateHunyuanVideo": "TeaCache calibrate (HunyuanVideo)",
}
