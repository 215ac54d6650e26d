"""Sampling as ComfyUI structures it (tests only): guider, OUTER_SAMPLE wrappers, cond/uncond batches, samplers."""
import torch

from comfy import patcher_extension

SCHEDULER_NAMES = ["simple"]


class ModelSamplingFlow:
    def __init__(self, shift=7.0):
        self.shift = shift

    def timestep(self, sigma):
        return sigma * 1000

    def sigmas(self, steps):
        t = torch.linspace(1, 0, steps + 1)
        return self.shift * t / (1 + (self.shift - 1) * t)


def calculate_sigmas(model_sampling, name, steps):
    if name != "simple":
        raise ValueError(name)
    return model_sampling.sigmas(steps)


class KSampler:
    def __init__(self, function):
        self.sampler_function = function


def sample_euler(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def sample_heun(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - model(x, s)) / s
        x_next = x + d * (s_next - s)
        if s_next > 0:  # the corrector: a second evaluation at the next sigma
            d2 = (x_next - model(x_next, s_next)) / s_next
            x_next = x + (d + d2) / 2 * (s_next - s)
        x = x_next
    return x


def sample_dpm_2(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - model(x, s)) / s
        if s_next == 0:
            x = x + d * (s_next - s)
            continue
        s_mid = ((s.log() + s_next.log()) / 2).exp()  # an intermediate sigma: a call between two steps
        x_mid = x + d * (s_mid - s)
        x = x + (x_mid - model(x_mid, s_mid)) / s_mid * (s_next - s)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpm_2": sample_dpm_2}


def ksampler(name):
    return KSampler(SAMPLERS[name])


class CFGGuider:
    def __init__(self, model_patcher, positive, negative, cfg, batch_conds=True):
        self.model_patcher, self.cfg, self.batch_conds = model_patcher, cfg, batch_conds
        self.original_conds = {"positive": positive, "negative": negative}
        self.calls = []  # (cond_or_uncond, sigma) of every model call

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        self.conds = {k: [dict(c) for c in v] for k, v in self.original_conds.items()}
        options = dict(self.model_patcher.model_options["transformer_options"])  # the patcher's wrappers merged in
        options["wrappers"] = self.model_patcher.wrappers
        self.transformer_options = options
        executor = patcher_extension.WrapperExecutor.new_class_executor(
            self.outer_sample, self,
            patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.OUTER_SAMPLE, options))
        return executor.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None):
        x = latent_image + noise * sigmas[0]
        return sampler.sampler_function(self.predict, x, sigmas)

    def _call(self, x, sigma, conds, which):
        model = self.model_patcher.model
        options = dict(self.transformer_options)
        options.update(cond_or_uncond=list(which), sigmas=sigma.reshape(1), sample_sigmas=None)
        keys = {k for c in conds for k in c if k not in ("cross_attn",)}
        extra = {k: torch.cat([c[k] for c in conds]) for k in keys if torch.is_tensor(conds[0].get(k))}
        if conds[0].get("guiding_frame_index") is not None:
            extra["guiding_frame_index"] = torch.tensor([float(conds[0]["guiding_frame_index"])])
        t = model.model_sampling.timestep(sigma).reshape(1).expand(len(conds))
        self.calls.append((list(which), float(sigma)))
        v = model.diffusion_model(torch.cat([x] * len(conds)), t,
                                  context=torch.cat([c["cross_attn"] for c in conds]), transformer_options=options,
                                  **{k: v for k, v in extra.items() if k != "guiding_frame_index"},
                                  **({"guiding_frame_index": extra["guiding_frame_index"]}
                                     if "guiding_frame_index" in extra else {}))
        return (torch.cat([x] * len(conds)) - sigma * v).chunk(len(conds))  # flow: x0 = x - sigma v

    def predict(self, x, sigma):
        cond = self.conds["positive"][0]
        if self.cfg == 1.0:
            return self._call(x, sigma, [cond], [0])[0]
        uncond = self.conds["negative"][0]
        same = set(cond) == set(uncond)  # ComfyUI batches conds only when they carry the same keys
        if self.batch_conds and same:
            c, u = self._call(x, sigma, [cond, uncond], [0, 1])
        else:
            c, = self._call(x, sigma, [cond], [0])
            u, = self._call(x, sigma, [uncond], [1])
        return u + (c - u) * self.cfg


def sample(model_patcher, noise, steps, cfg, sampler_name, positive, negative, latent_image, batch_conds=True):
    """Plain sampling (``comfy.sample.sample``'s role): returns the latent and the guider (for its calls)."""
    guider = CFGGuider(model_patcher, positive, negative, cfg, batch_conds)
    sigmas = calculate_sigmas(model_patcher.model.model_sampling, "simple", steps)
    out = guider.sample(noise, latent_image, ksampler(sampler_name), sigmas)
    return out, guider
